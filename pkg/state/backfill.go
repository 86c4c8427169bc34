package state

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// BackfillIPs brings every node's addresses in line with the configured
// prefixes (Headscale's `nodes backfillips`): a node without an address of
// a configured family gets one from the allocator, and an address of a
// family that is not configured is removed. Each node changed is stored
// and emitted like an admin edit (NodeUpdated with Self, and the policy
// recompiled for it), so peers and the node itself hear of its new
// addresses at once. It returns one line per change, in Headscale's words;
// on an error it returns the changes made until then.
func (s *State) BackfillIPs(ctx context.Context) ([]string, error) {
	v4p, v6p := s.opts.Alloc.Prefixes()
	var changes []string
	for _, n := range s.Nodes() {
		if !needsBackfill(n, v4p.IsValid(), v6p.IsValid()) {
			continue
		}
		var allocated, dropped []netip.Addr
		var lines []string
		_, err := s.update(ctx, n.ID, func(c *Node) error {
			// c is the node as it is now, under regMu: decide on it.
			for _, fam := range []struct {
				name       string
				v4         bool
				configured bool
				addr       *netip.Addr
			}{{"IPv4", true, v4p.IsValid(), &c.IPv4}, {"IPv6", false, v6p.IsValid(), &c.IPv6}} {
				switch {
				case fam.configured && !fam.addr.IsValid():
					ip, err := s.opts.Alloc.NextOf(fam.v4)
					if err != nil {
						return fmt.Errorf("allocating an %s address for node %d: %w", fam.name, c.ID, err)
					}
					allocated = append(allocated, ip)
					*fam.addr = ip
					lines = append(lines, fmt.Sprintf("assigned %s %q to Node(%d) %q", fam.name, ip.String(), c.ID, c.Hostname))
				case !fam.configured && fam.addr.IsValid():
					dropped = append(dropped, *fam.addr)
					lines = append(lines, fmt.Sprintf("removing %s %q from Node(%d) %q", fam.name, fam.addr.String(), c.ID, c.Hostname))
					*fam.addr = netip.Addr{}
				}
			}
			return nil
		})
		if err != nil {
			s.opts.Alloc.Release(allocated...)
			if errors.Is(err, ErrNodeNotFound) {
				continue // deleted meanwhile: nothing to backfill
			}
			return changes, fmt.Errorf("backfilling addresses: %w", err)
		}
		s.opts.Alloc.Release(dropped...)
		changes = append(changes, lines...)
		for _, l := range lines {
			s.log.Info("node address backfilled", "node", n.ID, "change", l)
		}
	}
	return changes, nil
}

// needsBackfill reports whether n lacks an address of a configured family
// or holds one of a family that is not configured.
func needsBackfill(n *Node, v4, v6 bool) bool {
	return v4 != n.IPv4.IsValid() || v6 != n.IPv6.IsValid()
}
