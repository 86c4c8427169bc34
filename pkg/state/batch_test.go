package state

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestRegistrationBatch: registrations that queue while regMu is held are
// written in one batch, and each still gets the answer it would have got
// alone: unique names and addresses, a machine twice in the queue
// registered once, a conflict in the store refused to its registration
// only.
func TestRegistrationBatch(t *testing.T) {
	type reg struct {
		machine key.MachinePublic
		nodeKey key.NodePublic
	}
	tests := []struct {
		name string
		// regs builds the queued registrations; existing is a node
		// registered before.
		regs         func(existing *Node) []reg
		wantErr      map[int]bool // registrations that must fail
		wantBatches  int          // store.RegisterNodes calls
		wantSameNode [][2]int     // registrations answered with one node
	}{
		{
			name: "fresh machines",
			regs: func(*Node) []reg {
				var r []reg
				for range 100 {
					r = append(r, reg{key.NewMachine().Public(), key.NewNode().Public()})
				}
				return r
			},
			wantBatches: 1,
		},
		{
			name: "a machine twice",
			regs: func(*Node) []reg {
				m := key.NewMachine().Public()
				r := []reg{{m, key.NewNode().Public()}}
				for range 20 {
					r = append(r, reg{key.NewMachine().Public(), key.NewNode().Public()})
				}
				return append(r, reg{m, key.NewNode().Public()})
			},
			wantBatches:  1,
			wantSameNode: [][2]int{{0, 21}},
		},
		{
			name: "a node key the store already has",
			regs: func(existing *Node) []reg {
				var r []reg
				for range 30 {
					r = append(r, reg{key.NewMachine().Public(), key.NewNode().Public()})
				}
				r[17].nodeKey = existing.NodeKey
				return r
			},
			wantErr:     map[int]bool{17: true},
			wantBatches: 1, // failed, then one by one
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			var mu sync.Mutex
			ops := map[string]int{}
			s := newTestStateWith(t, func(o *store.Options) {
				o.Observe = func(op string, _ time.Duration) {
					mu.Lock()
					ops[op]++
					mu.Unlock()
				}
			})
			st := s.st
			u, err := s.CreateUser(ctx, store.User{Name: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			ak, err := authkey.New(authkey.KindAuth)
			if err != nil {
				t.Fatal(err)
			}
			k, err := st.CreatePreAuthKey(ctx, store.PreAuthKey{Prefix: ak.Prefix, Hash: ak.Hash, Reusable: true, UserID: &u.ID})
			if err != nil {
				t.Fatal(err)
			}
			register := func(r reg) (*Node, error) {
				return s.RegisterWithKey(ctx, RegisterParams{
					Machine: r.machine, NodeKey: r.nodeKey, Key: k,
					Hostinfo: &tailcfg.Hostinfo{Hostname: "laptop"},
				})
			}
			existing, err := register(reg{key.NewMachine().Public(), key.NewNode().Public()})
			if err != nil {
				t.Fatal(err)
			}
			regs := tc.regs(existing)
			mu.Lock()
			clear(ops)
			mu.Unlock()

			// Hold regMu until every registration has queued, so that
			// they form one batch.
			s.regMu.Lock()
			nodes := make([]*Node, len(regs))
			errs := make([]error, len(regs))
			var wg sync.WaitGroup
			for i, r := range regs {
				wg.Go(func() { nodes[i], errs[i] = register(r) })
			}
			tstest.WaitFor(t, time.Minute, "every registration to queue", func() error {
				s.regQMu.Lock()
				defer s.regQMu.Unlock()
				if len(s.regQ) < len(regs) {
					return fmt.Errorf("%d of %d queued", len(s.regQ), len(regs))
				}
				return nil
			})
			s.regMu.Unlock()
			wg.Wait()

			names := map[string]int{existing.GivenName: -1}
			addrs := map[netip.Addr]int{existing.IPv4: -1, existing.IPv6: -1}
			ids := map[ids.NodeID]bool{existing.ID: true}
			for i, err := range errs {
				if tc.wantErr[i] {
					if err == nil || !errors.Is(err, store.ErrConflict) {
						t.Errorf("registration %d: err = %v; want a conflict", i, err)
					}
					continue
				}
				if err != nil {
					t.Errorf("registration %d: %v", i, err)
					continue
				}
				n := nodes[i]
				if ids[n.ID] {
					continue // checked below, with wantSameNode
				}
				ids[n.ID] = true
				if j, dup := names[n.GivenName]; dup {
					t.Errorf("registrations %d and %d both named %q", j, i, n.GivenName)
				}
				names[n.GivenName] = i
				for _, a := range []netip.Addr{n.IPv4, n.IPv6} {
					if j, dup := addrs[a]; dup {
						t.Errorf("registrations %d and %d both have %v", j, i, a)
					}
					addrs[a] = i
				}
			}
			for _, p := range tc.wantSameNode {
				if nodes[p[0]] == nil || nodes[p[1]] == nil || nodes[p[0]].ID != nodes[p[1]].ID {
					t.Errorf("registrations %d and %d of one machine: nodes %v and %v; want one", p[0], p[1], nodes[p[0]], nodes[p[1]])
				}
			}
			stored, err := st.ListNodes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(stored) != len(ids) || len(s.Nodes()) != len(ids) {
				t.Errorf("store has %d nodes, memory %d; want %d", len(stored), len(s.Nodes()), len(ids))
			}
			for _, sn := range stored {
				if n, ok := s.Node(sn.ID); !ok || n.GivenName != sn.GivenName || n.IPv4.String() != sn.IPv4 {
					t.Errorf("stored node %d (%s, %s) is not in memory as such: %v", sn.ID, sn.GivenName, sn.IPv4, n)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if ops["register_nodes"] != tc.wantBatches {
				t.Errorf("%d batches written (ops %v); want %d", ops["register_nodes"], ops, tc.wantBatches)
			}
		})
	}
}
