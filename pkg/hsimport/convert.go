// Package hsimport takes over a Headscale database: it converts what
// pkg/hsdb read from Headscale 0.23–0.29 into this server's schema and
// replaces the Headscale file with the converted one, keeping a verified
// copy of the original beside it.
//
// Convert applies the rules (every ID kept; tags in every form a release
// stored, owners dropped from tagged nodes; approved routes from the column
// or the older routes table; pre-auth and API keys kept in a form their
// holders' keys still match; the database-mode policy with its history)
// and names every row it changed or skipped in a Report. TakeOver runs the
// whole takeover of a configured database crash-safely, and Import writes
// a conversion into a new database for `headscale db import-headscale`.
package hsimport

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/dnsname"
	"github.com/hsctl/headscale/pkg/hsdb"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/types/key"
)

// ErrPolicy wraps the refusal of a stored policy that does not compile
// while the server runs in database policy mode: it would be the policy in
// force, and the server cannot start without one that compiles.
var ErrPolicy = errors.New("the Headscale database's current policy does not compile")

// Kinds of rows, as the report names them.
const (
	KindUsers       = "users"
	KindNodes       = "nodes"
	KindPreAuthKeys = "pre-auth keys"
	KindAPIKeys     = "API keys"
	KindPolicies    = "policies"
	KindRoutes      = "routes"
)

// kinds is the order the report lists kinds in.
var kinds = []string{KindUsers, KindNodes, KindPreAuthKeys, KindAPIKeys, KindPolicies, KindRoutes}

// Actions of a report entry.
const (
	// Changed: the row was converted with a value changed or dropped.
	Changed = "changed"
	// Skipped: the row was not converted.
	Skipped = "skipped"
	// Noted: the row was converted as it was; something about it is
	// worth knowing (a tag Headscale itself did not apply, a tagged node
	// losing its owner as Headscale 0.29 does).
	Noted = "note"
)

// Options are the server settings a conversion depends on.
type Options struct {
	// PolicyMode is the configured policy.mode. In "database" mode a
	// current policy that does not compile refuses the conversion; in
	// file mode it is converted as history and reported.
	PolicyMode string
	// V4 and V6 are the configured address prefixes: a node without an
	// address of a configured family is given a free one, and an address
	// outside them is kept and reported. A zero prefix turns both off for
	// its family.
	V4, V6 netip.Prefix
	// Now is the time given to rows Headscale left without a creation
	// time; zero means time.Now().
	Now time.Time
}

// Report is what a conversion did, for the log, the report file and
// `db import-headscale`.
type Report struct {
	// Source is the Headscale database that was read.
	Source string `json:"source"`
	// Release names what was found ("a Headscale 0.27.1 database ...").
	Release string `json:"release"`
	// Version is the version the copy is named after ("v0.27.1").
	Version string `json:"version"`
	// Copy is the verified copy of the original, "" when none was made
	// (on PostgreSQL: the schema holding Headscale's tables).
	Copy string `json:"copy,omitempty"`
	// ReportFile is where the report was written, "" when it was not; a
	// SQLite takeover writes it beside the copy.
	ReportFile string `json:"report_file,omitempty"`
	// Database is the converted database, "" for a dry run.
	Database string `json:"database,omitempty"`
	// Counts has one entry per kind of row, in a fixed order.
	Counts []Count `json:"counts"`
	// Entries name each row that was changed, skipped or noted.
	Entries []Entry `json:"entries"`
}

// Count is the tally of one kind of row.
type Count struct {
	Kind string `json:"kind"`
	// Read rows in Headscale's database; Converted rows written
	// (including Changed ones); Skipped rows not written.
	Read      int `json:"read"`
	Converted int `json:"converted"`
	Changed   int `json:"changed"`
	Skipped   int `json:"skipped"`
}

// Entry is one row that was changed, skipped or noted, and why.
type Entry struct {
	Kind   string `json:"kind"`
	ID     uint64 `json:"id"`
	Name   string `json:"name,omitempty"`
	Action string `json:"action"`
	Reason string `json:"reason"`
}

// Count returns the tally of kind.
func (r *Report) Count(kind string) Count {
	for _, c := range r.Counts {
		if c.Kind == kind {
			return c
		}
	}
	return Count{Kind: kind}
}

// converter holds one conversion's state.
type converter struct {
	snap *hsdb.Snapshot
	opts Options
	now  time.Time
	out  store.ImportData
	rep  *Report
	// entries per kind and id, merged into one entry per row.
	entries map[string]map[uint64]*Entry
	read    map[string]int
	skipped map[string]int

	users    map[uint64]*store.User // converted users by id
	keys     map[uint64]*store.PreAuthKey
	pol      *policy.Policy // the current policy, when it parses
	polErr   error
	polIndex int // index in out.Policies of the current policy, -1 if none
}

// Convert turns a snapshot of a Headscale database into this server's
// rows and reports every row it changed or skipped. It fails only for a
// current policy that does not compile in database policy mode (ErrPolicy).
func Convert(snap *hsdb.Snapshot, opts Options) (store.ImportData, *Report, error) {
	c := &converter{snap: snap, opts: opts, now: opts.Now,
		rep:     &Report{Source: snap.Path, Release: snap.Database.String(), Version: snap.Database.VersionName()},
		entries: map[string]map[uint64]*Entry{}, read: map[string]int{}, skipped: map[string]int{},
		users: map[uint64]*store.User{}, keys: map[uint64]*store.PreAuthKey{}, polIndex: -1}
	if c.now.IsZero() {
		c.now = time.Now()
	}
	c.now = c.now.UTC().Truncate(time.Millisecond)
	c.convertUsers()
	c.preAuthKeys()
	c.parsePolicy()
	c.nodes()
	c.routeIDs()
	c.apiKeys()
	if err := c.checkPolicy(); err != nil {
		return store.ImportData{}, c.finish(), err
	}
	c.out.Sequences = map[string]int64{}
	for from, to := range map[string]string{"users": "users", "nodes": "nodes", "pre_auth_keys": "pre_auth_keys",
		"api_keys": "api_keys", "policies": "policies", "routes": "route_ids"} {
		if v := snap.Sequences[from]; v > 0 {
			c.out.Sequences[to] = v
		}
	}
	return c.out, c.finish(), nil
}

// add records something about a row; a row's reasons are joined.
func (c *converter) add(kind string, id uint64, name, action, reason string) {
	m := c.entries[kind]
	if m == nil {
		m = map[uint64]*Entry{}
		c.entries[kind] = m
	}
	e := m[id]
	if e == nil {
		e = &Entry{Kind: kind, ID: id, Name: name, Action: action, Reason: reason}
		m[id] = e
		return
	}
	if name != "" {
		e.Name = name
	}
	rank := map[string]int{Noted: 0, Changed: 1, Skipped: 2}
	if rank[action] > rank[e.Action] {
		e.Action = action
	}
	e.Reason += "; " + reason
}

func (c *converter) skip(kind string, id uint64, name, reason string) {
	c.add(kind, id, name, Skipped, reason)
	c.skipped[kind]++
}

func (c *converter) finish() *Report {
	c.rep.Entries = []Entry{} // an empty list, not null, in JSON
	for _, k := range kinds {
		cnt := Count{Kind: k, Read: c.read[k], Skipped: c.skipped[k]}
		cnt.Converted = cnt.Read - cnt.Skipped
		ids := make([]uint64, 0, len(c.entries[k]))
		for id := range c.entries[k] {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			e := c.entries[k][id]
			if e.Action == Changed {
				cnt.Changed++
			}
			c.rep.Entries = append(c.rep.Entries, *e)
		}
		c.rep.Counts = append(c.rep.Counts, cnt)
	}
	return c.rep
}

// orNow gives a missing creation time the import time, and says so.
func (c *converter) orNow(t time.Time, kind string, id uint64, name string) time.Time {
	if t.IsZero() {
		c.add(kind, id, name, Changed, "no creation time in Headscale: set to the import time")
		return c.now
	}
	return t.Truncate(time.Millisecond)
}

func (c *converter) convertUsers() {
	taken := map[string]bool{}
	for _, u := range c.snap.Users {
		c.read[KindUsers]++
		if !u.DeletedAt.IsZero() {
			c.skip(KindUsers, u.ID, u.Name, "deleted in Headscale (deleted_at "+u.DeletedAt.Format(time.RFC3339)+"), which ignored it")
			continue
		}
		name := strings.TrimSpace(u.Name)
		if name == "" {
			name = "user-" + strconv.FormatUint(u.ID, 10)
			c.add(KindUsers, u.ID, name, Changed, "Headscale had no name for it: named "+name)
		} else if taken[name] {
			orig := name
			name = uniqueName(name+"-"+strconv.FormatUint(u.ID, 10), taken)
			c.add(KindUsers, u.ID, name, Changed, fmt.Sprintf("another user is named %q (Headscale allows one per login provider; this server one in all): renamed %s, and a policy naming %s@ must be edited", orig, name, orig))
		}
		taken[name] = true
		su := store.User{ID: ids.UserID(u.ID), Name: name, DisplayName: u.DisplayName, Email: u.Email,
			ProfilePicURL: u.ProfilePicURL, Provider: u.Provider, ProviderID: u.ProviderIdentifier}
		su.CreatedAt = c.orNow(u.CreatedAt, KindUsers, u.ID, name)
		c.out.Users = append(c.out.Users, su)
	}
	for i := range c.out.Users {
		c.users[uint64(c.out.Users[i].ID)] = &c.out.Users[i]
	}
}

// uniqueName returns name, or name-2, name-3, ... whichever is not taken.
func uniqueName(name string, taken map[string]bool) string {
	if !taken[name] {
		return name
	}
	for i := 2; ; i++ {
		if n := name + "-" + strconv.Itoa(i); !taken[n] {
			return n
		}
	}
}

// isLegacyPreAuthKey reports a pre-auth key as Headscale ≤0.27 made it:
// 48 lowercase hex characters.
func isLegacyPreAuthKey(k string) bool {
	if len(k) != 48 {
		return false
	}
	for _, r := range k {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

// validTags keeps the tags that are "tag:<name>" and reports the others.
func (c *converter) validTags(kind string, id uint64, name string, tags []string) []string {
	var out []string
	for _, t := range tags {
		if strings.HasPrefix(t, "tag:") && len(t) > len("tag:") && !strings.ContainsAny(t, " \t,") {
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
			continue
		}
		c.add(kind, id, name, Changed, fmt.Sprintf("tag %q is not a tag (tag:<name>): dropped", t))
	}
	slices.Sort(out)
	return out
}

func (c *converter) preAuthKeys() {
	prefixes := map[string]uint64{}
	for _, k := range c.snap.PreAuthKeys {
		c.read[KindPreAuthKeys]++
		sk := store.PreAuthKey{ID: ids.PreAuthKeyID(k.ID), Reusable: k.Reusable, Ephemeral: k.Ephemeral, Used: k.Used,
			Expiration: k.Expiration.Truncate(time.Millisecond)}
		switch {
		case k.Prefix != "" && len(k.Hash) > 0:
			// Headscale 0.28+: a 12-character prefix and the bcrypt
			// hash of the secret, kept as they are.
			sk.Prefix, sk.Hash = k.Prefix, k.Hash
		case isLegacyPreAuthKey(k.Key):
			// Headscale ≤0.27 stored the key itself. Keep only what
			// checks it: the first 12 characters as the prefix and
			// the SHA-256 of the other 36.
			var err error
			if sk.Prefix, sk.Hash, err = authkey.LegacyAuth(k.Key); err != nil {
				c.skip(KindPreAuthKeys, k.ID, "", err.Error())
				continue
			}
			sk.Legacy = true
		default:
			c.skip(KindPreAuthKeys, k.ID, "", "the key is in no form Headscale 0.23–0.29 made (neither 48 hex characters nor a prefix and hash): its holder could not use it here")
			continue
		}
		if other, dup := prefixes[sk.Prefix]; dup {
			c.skip(KindPreAuthKeys, k.ID, sk.Prefix, fmt.Sprintf("its prefix %s is that of pre-auth key %d too", sk.Prefix, other))
			continue
		}
		prefixes[sk.Prefix] = k.ID
		if k.UserID != 0 {
			if _, ok := c.users[k.UserID]; ok {
				uid := ids.UserID(k.UserID)
				sk.UserID = &uid
			} else {
				c.add(KindPreAuthKeys, k.ID, sk.Prefix, Changed, fmt.Sprintf("its user %d was not converted: the key has no user", k.UserID))
			}
		}
		sk.Tags = c.validTags(KindPreAuthKeys, k.ID, sk.Prefix, k.Tags)
		if sk.UserID == nil && len(sk.Tags) == 0 {
			c.add(KindPreAuthKeys, k.ID, sk.Prefix, Noted, "the key has neither a user nor tags: it cannot register a node")
		}
		sk.CreatedAt = c.orNow(k.CreatedAt, KindPreAuthKeys, k.ID, sk.Prefix)
		c.out.PreAuthKeys = append(c.out.PreAuthKeys, sk)
	}
	for i := range c.out.PreAuthKeys {
		c.keys[uint64(c.out.PreAuthKeys[i].ID)] = &c.out.PreAuthKeys[i]
	}
}

// parsePolicy parses the current policy (the newest row not deleted) and
// adds every live row to the output in id order.
func (c *converter) parsePolicy() {
	for _, p := range c.snap.Policies {
		c.read[KindPolicies]++
		if !p.DeletedAt.IsZero() {
			c.skip(KindPolicies, p.ID, "", "deleted in Headscale, which ignored it")
			continue
		}
		upd := p.UpdatedAt
		if upd.IsZero() {
			upd = p.CreatedAt
		}
		c.out.Policies = append(c.out.Policies, store.PolicyRecord{ID: int64(p.ID), Data: p.Data, UpdatedAt: c.orNow(upd, KindPolicies, p.ID, "")})
	}
	if len(c.out.Policies) == 0 {
		return
	}
	c.polIndex = len(c.out.Policies) - 1
	cur := &c.out.Policies[c.polIndex]
	c.pol, c.polErr = policy.Parse([]byte(cur.Data))
	if c.polErr == nil {
		return
	}
	// A Headscale ≤0.25 policy may name users without the "@" that
	// policy v2 (Headscale 0.26+, and this server) requires.
	if fixed, changed := addUserAt(cur.Data, c.userNames()); changed {
		if p, err := policy.Parse([]byte(fixed)); err == nil {
			c.out.Policies = append(c.out.Policies, store.PolicyRecord{ID: cur.ID + 1, Data: fixed, UpdatedAt: c.now})
			c.polIndex = len(c.out.Policies) - 1
			c.pol, c.polErr = p, nil
			c.add(KindPolicies, uint64(cur.ID), "", Changed, "it names users without the \"@\" policy v2 requires: kept as history, and a copy with \"name@\" added is the current policy")
			if seq := c.snap.Sequences["policies"]; seq < cur.ID+1 {
				c.snap.Sequences["policies"] = cur.ID + 1
			}
		}
	}
}

func (c *converter) userNames() []string {
	var out []string
	for _, u := range c.out.Users {
		out = append(out, u.Name)
	}
	return out
}

// checkPolicy compiles the current policy against the converted users and
// nodes.
func (c *converter) checkPolicy() error {
	if c.polIndex < 0 {
		return nil
	}
	id := uint64(c.out.Policies[c.polIndex].ID)
	err := c.polErr
	if err == nil {
		var users []policy.User
		for _, u := range c.out.Users {
			users = append(users, policy.User{ID: u.ID, Name: u.Name, Email: u.Email})
		}
		var nodes []policy.Node
		for _, n := range c.out.Nodes {
			pn := policy.Node{ID: n.ID, Tags: n.Tags, Hostname: n.Hostname}
			if n.UserID != nil {
				pn.UserID = *n.UserID
			}
			pn.IPv4, _ = netip.ParseAddr(n.IPv4)
			pn.IPv6, _ = netip.ParseAddr(n.IPv6)
			for _, r := range n.ApprovedRoutes {
				if p, perr := netip.ParsePrefix(r); perr == nil {
					pn.ApprovedRoutes = append(pn.ApprovedRoutes, p)
				}
			}
			nodes = append(nodes, pn)
		}
		_, _, err = policy.Compile(c.pol, users, nodes)
	}
	if err == nil {
		return nil
	}
	if c.opts.PolicyMode == "database" {
		c.add(KindPolicies, id, "", Skipped, "the current policy does not compile: "+err.Error())
		return fmt.Errorf("%w (policy %d): %w; fix it with Headscale (headscale policy set) before switching, or set policy.mode: file", ErrPolicy, id, err)
	}
	c.add(KindPolicies, id, "", Noted, "the current policy does not compile ("+err.Error()+"); kept as history, not in force (policy.mode is "+c.opts.PolicyMode+")")
	return nil
}

// requestTags reads Hostinfo.RequestTags from raw host info; it decodes
// only when the text mentions them.
func requestTags(hostInfo string) []string {
	if !strings.Contains(hostInfo, "RequestTags") {
		return nil
	}
	var hi struct{ RequestTags []string }
	if json.Unmarshal([]byte(hostInfo), &hi) != nil {
		return nil
	}
	return hi.RequestTags
}

// tagsBefore028 reports whether the release stored only forced tags in
// nodes (Headscale ≤0.27): tags a client requested were applied at run
// time when the policy's tagOwners allowed them.
func (c *converter) tagsBefore028() bool {
	return !strings.HasPrefix(c.snap.Database.Release, "0.28") && !strings.HasPrefix(c.snap.Database.Release, "0.29")
}

func nodeLabel(n hsdb.Node) string {
	if n.GivenName != "" {
		return n.GivenName
	}
	return n.Hostname
}

func (c *converter) nodes() {
	// A node key that more than one live node holds, or a machine key
	// that more than one live node of one user holds: keep the node seen
	// last (then the newest), skip the others. A machine's nodes of
	// different users are all kept: as in Headscale (0.26+), a machine
	// that logged in as another user has a node per user.
	keep := map[uint64]bool{}
	machine := func(n hsdb.Node) string { return "m" + n.MachineKey + "/" + strconv.FormatUint(n.UserID, 10) }
	winner := map[string]hsdb.Node{}
	better := func(a, b hsdb.Node) bool { // a seen later than b
		if !a.LastSeen.Equal(b.LastSeen) {
			return a.LastSeen.After(b.LastSeen)
		}
		return a.ID > b.ID
	}
	for _, n := range c.snap.Nodes {
		if !n.DeletedAt.IsZero() {
			continue
		}
		for _, k := range []string{machine(n), "n" + n.NodeKey} {
			if w, ok := winner[k]; !ok || better(n, w) {
				winner[k] = n
			}
		}
	}
	for _, n := range c.snap.Nodes {
		keep[n.ID] = winner[machine(n)].ID == n.ID && winner["n"+n.NodeKey].ID == n.ID
	}

	routes := map[uint64][]string{} // ≤0.25: enabled routes per node
	if !c.snap.HasApprovedRoutes {
		for _, r := range c.snap.Routes {
			if r.Enabled && r.DeletedAt.IsZero() {
				routes[r.NodeID] = append(routes[r.NodeID], r.Prefix)
			}
		}
	}

	names := map[string]bool{}
	v4s, v6s := map[netip.Addr]uint64{}, map[netip.Addr]uint64{}
	for _, n := range c.snap.Nodes {
		c.read[KindNodes]++
		label := nodeLabel(n)
		if !n.DeletedAt.IsZero() {
			c.skip(KindNodes, n.ID, label, "deleted in Headscale, which ignored it")
			continue
		}
		if !keep[n.ID] {
			w := winner[machine(n)]
			if w.ID == n.ID {
				w = winner["n"+n.NodeKey]
			}
			c.skip(KindNodes, n.ID, label, fmt.Sprintf("node %d (%s) has the same node key, or the same machine key and user, and was seen later; a client can be only one of them", w.ID, nodeLabel(w)))
			continue
		}
		var mk key.MachinePublic
		if err := mk.UnmarshalText([]byte(n.MachineKey)); err != nil || mk.IsZero() {
			c.skip(KindNodes, n.ID, label, fmt.Sprintf("machine key %q is unreadable", n.MachineKey))
			continue
		}
		var nk key.NodePublic
		if err := nk.UnmarshalText([]byte(n.NodeKey)); err != nil || nk.IsZero() {
			c.skip(KindNodes, n.ID, label, fmt.Sprintf("node key %q is unreadable", n.NodeKey))
			continue
		}
		sn := store.Node{ID: ids.NodeID(n.ID), MachineKey: mk.String(), NodeKey: nk.String(), Hostname: n.Hostname,
			RegisterMethod: n.RegisterMethod, LastSeen: n.LastSeen.Truncate(time.Millisecond), Expiry: n.Expiry.Truncate(time.Millisecond)}
		if n.DiscoKey != "" {
			var dk key.DiscoPublic
			if err := dk.UnmarshalText([]byte(n.DiscoKey)); err != nil {
				c.add(KindNodes, n.ID, label, Changed, fmt.Sprintf("disco key %q is unreadable: dropped (the client sends it again)", n.DiscoKey))
			} else if !dk.IsZero() {
				sn.DiscoKey = dk.String()
			}
		}
		for _, e := range n.Endpoints {
			if ap, err := netip.ParseAddrPort(e); err == nil {
				sn.Endpoints = append(sn.Endpoints, ap.String())
			}
		}
		if n.HostInfo != "" {
			if json.Valid([]byte(n.HostInfo)) && bytes.HasPrefix(bytes.TrimSpace([]byte(n.HostInfo)), []byte("{")) {
				sn.Hostinfo = []byte(n.HostInfo)
			} else {
				c.add(KindNodes, n.ID, label, Changed, "host info is not a JSON object: dropped (the client sends it again)")
			}
		}

		// Key, then owner and tags.
		var k *store.PreAuthKey
		if n.AuthKeyID != 0 {
			if k = c.keys[n.AuthKeyID]; k != nil {
				kid := k.ID
				sn.AuthKeyID = &kid
				sn.Ephemeral = k.Ephemeral
			} else {
				c.add(KindNodes, n.ID, label, Changed, fmt.Sprintf("its pre-auth key %d was not converted: the node keeps no key", n.AuthKeyID))
			}
		}
		tags := c.validTags(KindNodes, n.ID, label, n.Tags)
		owner := n.UserID
		if owner == 0 && len(tags) == 0 && k != nil && k.UserID != nil {
			// Headscale 0.29.0 cleared the owner of nodes it wrongly
			// took for tagged; 0.29.1 restores it from the key.
			owner = uint64(*k.UserID)
			c.add(KindNodes, n.ID, label, Changed, fmt.Sprintf("no owner in Headscale: owner restored from its pre-auth key (user %d), as Headscale 0.29.1 does", owner))
		}
		u := c.users[owner]
		if c.tagsBefore028() {
			var rejected []string
			for _, t := range requestTags(n.HostInfo) {
				if slices.Contains(tags, t) {
					continue
				}
				pu := policy.User{}
				if u != nil {
					pu = policy.User{ID: u.ID, Name: u.Name, Email: u.Email}
				}
				if c.pol != nil && strings.HasPrefix(t, "tag:") && c.pol.TagOwnerAllowed(t, pu, n.Tags) {
					tags = append(tags, t)
					c.add(KindNodes, n.ID, label, Noted, fmt.Sprintf("tag %s, requested by the client and allowed by the policy's tagOwners, is now stored on the node", t))
				} else {
					rejected = append(rejected, t)
				}
			}
			if len(rejected) > 0 {
				c.add(KindNodes, n.ID, label, Noted, fmt.Sprintf("requested tags %s are not applied: the policy's tagOwners do not allow them (Headscale did not apply them either)", strings.Join(rejected, ", ")))
			}
			slices.Sort(tags)
		}
		sn.Tags = tags
		if len(tags) > 0 {
			if owner != 0 {
				c.add(KindNodes, n.ID, label, Noted, fmt.Sprintf("tagged (%s): owned by its tags, no longer by user %d (as Headscale 0.29 does)", strings.Join(tags, ", "), owner))
			}
		} else {
			if owner == 0 {
				c.skip(KindNodes, n.ID, label, "it has neither an owner nor tags")
				continue
			}
			if u == nil {
				c.skip(KindNodes, n.ID, label, fmt.Sprintf("its owner, user %d, was not converted", owner))
				continue
			}
			uid := u.ID
			sn.UserID = &uid
		}

		// Addresses.
		sn.IPv4 = c.address(n, label, n.IPv4, true, v4s)
		sn.IPv6 = c.address(n, label, n.IPv6, false, v6s)

		// Name.
		given := strings.TrimSpace(n.GivenName)
		if !dnsname.Valid(given) {
			fixed := dnsname.Sanitize(given)
			if given == "" {
				fixed = dnsname.Sanitize(n.Hostname)
			}
			c.add(KindNodes, n.ID, label, Changed, fmt.Sprintf("name %q is not a DNS label: named %s", given, fixed))
			given = fixed
		}
		if names[given] {
			orig := given
			given = dnsname.Unique(given+"-"+strconv.FormatUint(n.ID, 10), func(s string) bool { return names[s] })
			c.add(KindNodes, n.ID, label, Changed, fmt.Sprintf("another node is named %s: renamed %s", orig, given))
		}
		names[given] = true
		sn.GivenName = given

		// Approved routes.
		approved := n.ApprovedRoutes
		if !c.snap.HasApprovedRoutes {
			approved = routes[n.ID]
		}
		for _, r := range approved {
			p, err := netip.ParsePrefix(strings.TrimSpace(r))
			if err != nil {
				c.add(KindNodes, n.ID, label, Changed, fmt.Sprintf("approved route %q is not a prefix: dropped", r))
				continue
			}
			if s := p.Masked().String(); !slices.Contains(sn.ApprovedRoutes, s) {
				sn.ApprovedRoutes = append(sn.ApprovedRoutes, s)
			}
		}
		slices.Sort(sn.ApprovedRoutes)

		sn.CreatedAt = c.orNow(n.CreatedAt, KindNodes, n.ID, label)
		sn.UpdatedAt = n.UpdatedAt.Truncate(time.Millisecond)
		if sn.UpdatedAt.IsZero() {
			sn.UpdatedAt = sn.CreatedAt
		}
		c.out.Nodes = append(c.out.Nodes, sn)
	}
	c.fillAddresses(v4s, v6s)
}

// fillAddresses gives a node without an address of a configured family
// (none in Headscale, or one not kept above) a free one, as `headscale
// nodes backfillips` would; the client learns it from its next map.
func (c *converter) fillAddresses(v4s, v6s map[netip.Addr]uint64) {
	alloc := ipalloc.New(c.opts.V4, c.opts.V6, ipalloc.Sequential)
	for a := range v4s {
		alloc.Reserve(a)
	}
	for a := range v6s {
		alloc.Reserve(a)
	}
	for i := range c.out.Nodes {
		n := &c.out.Nodes[i]
		for _, f := range []struct {
			v4     bool
			family string
			pfx    netip.Prefix
			addr   *string
		}{{true, "IPv4", c.opts.V4, &n.IPv4}, {false, "IPv6", c.opts.V6, &n.IPv6}} {
			if *f.addr != "" || !f.pfx.IsValid() {
				continue
			}
			a, err := alloc.NextOf(f.v4)
			if err != nil {
				c.add(KindNodes, uint64(n.ID), n.GivenName, Changed, fmt.Sprintf("no %s address, and none is free: %v", f.family, err))
				continue
			}
			*f.addr = a.String()
			c.add(KindNodes, uint64(n.ID), n.GivenName, Changed, fmt.Sprintf("it had no %s address: given %s", f.family, a))
		}
	}
}

// address checks one of a node's addresses: it must parse, be of its
// family and not be taken by a node converted before (lower ID).
func (c *converter) address(n hsdb.Node, label, text string, v4 bool, taken map[netip.Addr]uint64) string {
	family, pfx := "IPv6", c.opts.V6
	if v4 {
		family, pfx = "IPv4", c.opts.V4
	}
	if text == "" {
		return ""
	}
	a, err := netip.ParseAddr(text)
	if err != nil || a.Is4() != v4 || a.Zone() != "" {
		c.add(KindNodes, n.ID, label, Changed, fmt.Sprintf("%s address %q is unusable: not kept", family, text))
		return ""
	}
	if other, dup := taken[a]; dup {
		c.add(KindNodes, n.ID, label, Changed, fmt.Sprintf("%s address %s is node %d's too: not kept here", family, a, other))
		return ""
	}
	taken[a] = n.ID
	if pfx.IsValid() && !pfx.Contains(a) {
		c.add(KindNodes, n.ID, label, Noted, fmt.Sprintf("%s address %s is outside the configured prefix %s: kept", family, a, pfx))
	}
	return a.String()
}

// routeIDs carries the routes table's IDs (Headscale ≤0.25) over.
func (c *converter) routeIDs() {
	nodes := map[uint64]bool{}
	for _, n := range c.out.Nodes {
		nodes[uint64(n.ID)] = true
	}
	seen := map[string]uint64{}
	for _, r := range c.snap.Routes {
		c.read[KindRoutes]++
		name := r.Prefix
		switch p, err := netip.ParsePrefix(r.Prefix); {
		case !r.DeletedAt.IsZero():
			c.skip(KindRoutes, r.ID, name, "deleted in Headscale, which ignored it")
		case err != nil:
			c.skip(KindRoutes, r.ID, name, fmt.Sprintf("prefix %q is unreadable", r.Prefix))
		case !nodes[r.NodeID]:
			c.skip(KindRoutes, r.ID, name, fmt.Sprintf("its node %d was not converted", r.NodeID))
		default:
			k := strconv.FormatUint(r.NodeID, 10) + " " + p.Masked().String()
			if other, dup := seen[k]; dup {
				c.skip(KindRoutes, r.ID, name, fmt.Sprintf("route %d names the same node and prefix; its ID is kept", other))
				continue
			}
			seen[k] = r.ID
			at := r.CreatedAt.Truncate(time.Millisecond)
			if at.IsZero() {
				at = c.now
			}
			c.out.RouteIDs = append(c.out.RouteIDs, store.RouteID{ID: ids.RouteID(r.ID), NodeID: ids.NodeID(r.NodeID), Prefix: p.Masked(), CreatedAt: at})
		}
	}
}

func (c *converter) apiKeys() {
	for _, k := range c.snap.APIKeys {
		c.read[KindAPIKeys]++
		c.out.APIKeys = append(c.out.APIKeys, store.APIKey{ID: ids.APIKeyID(k.ID), Prefix: k.Prefix, Hash: k.Hash,
			Expiration: k.Expiration.Truncate(time.Millisecond), LastSeen: k.LastSeen.Truncate(time.Millisecond),
			CreatedAt: c.orNow(k.CreatedAt, KindAPIKeys, k.ID, k.Prefix)})
	}
}
