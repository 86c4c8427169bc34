package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/jackc/pgx/v5"
)

// readMethods are the exported methods of *Store that write nothing.
var readMethods = []string{
	"ChangeChannel", "ChangeLogHead", "Describe", "Engine", "GetAPIKey", "GetAPIKeyByPrefix", "GetNode", "GetPolicy",
	"GetPreAuthKey", "GetPreAuthKeyByPrefix", "GetRouteID", "GetUser", "GetUserByName", "GetUserByProvider",
	"ListAPIKeys", "ListNodes", "ListPreAuthKeys", "ListRouteIDs", "ListUsers", "LoadSnapshot", "Ping", "Pools",
	"ReadChanges", "SchemaVersion", "ClusterServers", "HoldsLease", "NodeSessions", "DialListener",
	"GetAuthRequest", "DecidedAuthRequests",
}

// unloggedWrites are the exported methods of *Store that write without
// appending to the change log, and why that is right.
var unloggedWrites = map[string]string{
	"UpdateNodes": "the periodic write of live fields (endpoints, host info, last seen) the state keeps in memory " +
		"anyway; in cluster mode the LiveWriter replaces it and logs live records (design §3.2)",
	"SetLastSeen":        "live field, as UpdateNodes",
	"CreatePreAuthKey":   "the state keeps no pre-auth keys in memory: registration reads them from the store",
	"ExpirePreAuthKey":   "as CreatePreAuthKey",
	"CreateAPIKey":       "the state keeps no API keys in memory: the API reads them from the store",
	"ExpireAPIKey":       "as CreateAPIKey",
	"DeleteAPIKey":       "as CreateAPIKey",
	"TouchAPIKey":        "as CreateAPIKey",
	"RehashAPIKey":       "as CreateAPIKey",
	"AddRouteIDs":        "route IDs are not kept in memory: the routes verbs read them from the store",
	"DeleteRouteIDs":     "as AddRouteIDs",
	"Checkpoint":         "SQLite's WAL maintenance: changes no row",
	"JoinCluster":        "a server's own row: the others list the servers at each heartbeat, and its sessions come as live records",
	"RenewServer":        "as JoinCluster",
	"AcquireLease":       "leases are read and taken at each heartbeat, never kept from the log",
	"ReleaseLease":       "as AcquireLease",
	"LockRegistrations":  "an advisory lock: changes no row",
	"PruneChanges":       "deletes records every live server applied: nobody reads them again",
	"Close":              "closes the pools: changes no row",
	"PutAuthRequest":     "a pending authentication no server keeps from the log: the others read its row when asked about it",
	"ClaimAuthRequest":   "as PutAuthRequest: a claim is read by the next claimer, and the decision is logged (DecideAuthRequest)",
	"ReleaseAuthRequest": "as ClaimAuthRequest",
	"TakeAuthRequest":    "as PutAuthRequest: an OIDC login's state, read once by the server its callback reaches",
}

// clusterWrites are the logged writes that exist only for several
// servers on one database: they refuse to run without the change log, so
// the tests of writes with it off leave them out.
var clusterWrites = []string{"AppendLive", "LeaveCluster", "DeclareServerGone", "SetPrimaries", "DecideAuthRequest"}

// loggedWrites are the exported methods of *Store whose writes change
// what the state keeps in memory, with the kinds of records each may
// append; logCases calls each of them.
var loggedWrites = map[string][]string{
	"RegisterNode":        {KindNode},
	"RegisterNodeWithKey": {KindNode},
	"RegisterNodes":       {KindNode},
	"UpdateNode":          {KindNode},
	"UpdateNodeWithKey":   {KindNode},
	"UpdateNodeIfVersion": {KindNode},
	"DeleteNode":          {KindNodeDeleted},
	"DeletePreAuthKey":    {KindNode}, // nodes registered with it lose the link
	"CreateUser":          {KindUser},
	"RenameUser":          {KindUser},
	"UpdateUserIdentity":  {KindUser},
	"SetUserGroups":       {KindUser},
	"DeleteUser":          {KindUserDeleted, KindNode},
	"SetPolicy":           {KindPolicy},
	"InsertPolicy":        {KindPolicy},
	"DeletePolicy":        {KindPolicy},
	"AppendLive":          {KindLive},
	"LeaveCluster":        {KindServerGone},
	"DeclareServerGone":   {KindServerGone},
	"SetPrimaries":        {KindPrimary},
	"DecideAuthRequest":   {KindAuthDecided},
}

// logFixture makes rows with names no other call used.
type logFixture struct {
	t *testing.T
	s *Store
	n atomic.Int64
}

func (f *logFixture) name(prefix string) string { return fmt.Sprintf("%s-%d", prefix, f.n.Add(1)) }

func (f *logFixture) user() User {
	f.t.Helper()
	u, err := f.s.CreateUser(f.t.Context(), User{Name: f.name("user")})
	if err != nil {
		f.t.Fatal(err)
	}
	return u
}

func (f *logFixture) node(uid *ids.UserID) Node {
	f.t.Helper()
	n, err := f.s.RegisterNode(f.t.Context(), testNode(f.name("node"), uid), 0)
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

func (f *logFixture) key(uid *ids.UserID) PreAuthKey {
	f.t.Helper()
	k, err := f.s.CreatePreAuthKey(f.t.Context(), PreAuthKey{Prefix: f.name("key"), Hash: []byte{1}, UserID: uid})
	if err != nil {
		f.t.Fatal(err)
	}
	return k
}

// logCase is one call of a logged write. prepare makes what the write
// needs (its own records are not counted) and returns the write; kinds
// are the records it must append. fail, if set, prepares a call of the
// same method that fails with failErr and must append nothing.
type logCase struct {
	method  string
	name    string
	kinds   []string
	prepare func(f *logFixture) func(ctx context.Context) error
	fail    func(f *logFixture) func(ctx context.Context) error
	failErr error
}

func logCases() []logCase {
	ignore := func(_ any, err error) error { return err }
	return []logCase{
		{method: "RegisterNode", kinds: []string{KindNode},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				return func(ctx context.Context) error { return ignore(f.s.RegisterNode(ctx, testNode(f.name("n"), &u.ID), 0)) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				n := f.node(nil)
				dup := testNode(f.name("n"), nil)
				dup.NodeKey = n.NodeKey
				return func(ctx context.Context) error { return ignore(f.s.RegisterNode(ctx, dup, 0)) }
			}, failErr: ErrConflict},
		{method: "RegisterNodeWithKey", kinds: []string{KindNode},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				k := f.key(&u.ID)
				return func(ctx context.Context) error {
					return ignore(f.s.RegisterNodeWithKey(ctx, testNode(f.name("n"), &u.ID), k.ID, Rehash{Key: k.ID, From: []byte{1}, To: []byte{2}}))
				}
			},
			fail: func(f *logFixture) func(context.Context) error {
				u := f.user()
				k := f.key(&u.ID)
				if _, err := f.s.RegisterNode(f.t.Context(), testNode(f.name("n"), &u.ID), k.ID); err != nil {
					f.t.Fatal(err)
				}
				return func(ctx context.Context) error {
					return ignore(f.s.RegisterNodeWithKey(ctx, testNode(f.name("n"), &u.ID), k.ID, Rehash{}))
				}
			}, failErr: ErrKeyUsed},
		{method: "RegisterNodes", kinds: []string{KindNode, KindNode, KindNode},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				batch := []Node{testNode(f.name("n"), &u.ID), testNode(f.name("n"), nil), testNode(f.name("n"), &u.ID)}
				return func(ctx context.Context) error { return ignore(f.s.RegisterNodes(ctx, batch)) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				n := f.node(nil)
				dup := testNode(f.name("n"), nil)
				dup.GivenName = n.GivenName
				batch := []Node{testNode(f.name("n"), nil), dup}
				return func(ctx context.Context) error { return ignore(f.s.RegisterNodes(ctx, batch)) }
			}, failErr: ErrConflict},
		{method: "RegisterNodes", name: "more than one insert", kinds: slices.Repeat([]string{KindNode}, registerChunk+2),
			prepare: func(f *logFixture) func(context.Context) error {
				var batch []Node
				for range registerChunk + 2 {
					batch = append(batch, testNode(f.name("n"), nil))
				}
				return func(ctx context.Context) error { return ignore(f.s.RegisterNodes(ctx, batch)) }
			}},
		{method: "UpdateNode", kinds: []string{KindNode},
			prepare: func(f *logFixture) func(context.Context) error {
				n := f.node(nil)
				n.Tags = []string{"tag:x"}
				return func(ctx context.Context) error { return errOf(f.s.UpdateNode(ctx, n, 0)) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				a, b := f.node(nil), f.node(nil)
				b.GivenName = a.GivenName
				return func(ctx context.Context) error { return errOf(f.s.UpdateNode(ctx, b, 0)) }
			}, failErr: ErrConflict},
		{method: "UpdateNodeWithKey", kinds: []string{KindNode},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				n := f.node(&u.ID)
				k := f.key(&u.ID)
				n.NodeKey = "nodekey:" + f.name("again")
				return func(ctx context.Context) error { return errOf(f.s.UpdateNodeWithKey(ctx, n, k.ID, Rehash{})) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				n := testNode(f.name("gone"), nil)
				n.ID = 999_999
				return func(ctx context.Context) error { return errOf(f.s.UpdateNodeWithKey(ctx, n, 0, Rehash{})) }
			}, failErr: ErrNotFound},
		{method: "UpdateNodeIfVersion", kinds: []string{KindNode},
			prepare: func(f *logFixture) func(context.Context) error {
				n := f.node(nil)
				n.Hostname = "renamed"
				return func(ctx context.Context) error { return ignore(f.s.UpdateNodeIfVersion(ctx, n)) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				n := f.node(nil)
				if err := errOf(f.s.UpdateNode(f.t.Context(), n, 0)); err != nil { // now at version 2
					f.t.Fatal(err)
				}
				return func(ctx context.Context) error { return ignore(f.s.UpdateNodeIfVersion(ctx, n)) }
			}, failErr: ErrStale},
		{method: "DeleteNode", kinds: []string{KindNodeDeleted},
			prepare: func(f *logFixture) func(context.Context) error {
				n := f.node(nil)
				return func(ctx context.Context) error { return f.s.DeleteNode(ctx, n.ID) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error { return f.s.DeleteNode(ctx, 999_999) }
			}, failErr: ErrNotFound},
		{method: "DeletePreAuthKey", kinds: []string{KindNode},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				k := f.key(&u.ID)
				n := testNode(f.name("n"), &u.ID)
				n.AuthKeyID = &k.ID
				if _, err := f.s.RegisterNode(f.t.Context(), n, 0); err != nil {
					f.t.Fatal(err)
				}
				return func(ctx context.Context) error { return f.s.DeletePreAuthKey(ctx, k.ID) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error { return f.s.DeletePreAuthKey(ctx, 999_999) }
			}, failErr: ErrNotFound},
		{method: "DeletePreAuthKey", name: "no node registered with it", kinds: nil,
			prepare: func(f *logFixture) func(context.Context) error {
				k := f.key(nil)
				return func(ctx context.Context) error { return f.s.DeletePreAuthKey(ctx, k.ID) }
			}},
		{method: "CreateUser", kinds: []string{KindUser},
			prepare: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error {
					return ignore(f.s.CreateUser(ctx, User{Name: f.name("u"), Groups: []string{"g"}}))
				}
			},
			fail: func(f *logFixture) func(context.Context) error {
				u := f.user()
				return func(ctx context.Context) error { return ignore(f.s.CreateUser(ctx, User{Name: u.Name})) }
			}, failErr: ErrConflict},
		{method: "RenameUser", kinds: []string{KindUser},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				return func(ctx context.Context) error { return ignore(f.s.RenameUser(ctx, u.ID, f.name("renamed"))) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				a, b := f.user(), f.user()
				return func(ctx context.Context) error { return ignore(f.s.RenameUser(ctx, b.ID, a.Name)) }
			}, failErr: ErrConflict},
		{method: "UpdateUserIdentity", kinds: []string{KindUser},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				u.Email, u.Provider, u.ProviderID = "a@example.com", "oidc", f.name("sub")
				return func(ctx context.Context) error { return ignore(f.s.UpdateUserIdentity(ctx, u)) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error { return ignore(f.s.UpdateUserIdentity(ctx, User{ID: 999_999})) }
			}, failErr: ErrNotFound},
		{method: "SetUserGroups", kinds: []string{KindUser},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				return func(ctx context.Context) error { return ignore(f.s.SetUserGroups(ctx, u.ID, []string{"eng"})) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error { return ignore(f.s.SetUserGroups(ctx, 999_999, nil)) }
			}, failErr: ErrNotFound},
		{method: "DeleteUser", kinds: []string{KindUserDeleted},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				f.key(&u.ID)
				return func(ctx context.Context) error { return f.s.DeleteUser(ctx, u.ID) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				u := f.user()
				f.node(&u.ID)
				return func(ctx context.Context) error { return f.s.DeleteUser(ctx, u.ID) }
			}, failErr: ErrConflict},
		{method: "DeleteUser", name: "a tagged node registered with its key", kinds: []string{KindNode, KindUserDeleted},
			prepare: func(f *logFixture) func(context.Context) error {
				u := f.user()
				k := f.key(&u.ID)
				n := testNode(f.name("tagged"), nil)
				n.Tags, n.AuthKeyID = []string{"tag:x"}, &k.ID
				if _, err := f.s.RegisterNode(f.t.Context(), n, 0); err != nil {
					f.t.Fatal(err)
				}
				return func(ctx context.Context) error { return f.s.DeleteUser(ctx, u.ID) }
			}},
		{method: "SetPolicy", kinds: []string{KindPolicy},
			prepare: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error { return f.s.SetPolicy(ctx, `{"acls":[]}`) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error { return f.s.SetPolicy(ctx, "nul\x00") }
			}},
		{method: "InsertPolicy", kinds: []string{KindPolicy},
			prepare: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error {
					_, _, err := f.s.InsertPolicy(ctx, `{}`)
					return err
				}
			},
			fail: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error {
					_, _, err := f.s.InsertPolicy(ctx, "nul\x00")
					return err
				}
			}},
		{method: "DeletePolicy", kinds: []string{KindPolicy},
			prepare: func(f *logFixture) func(context.Context) error {
				id, _, err := f.s.InsertPolicy(f.t.Context(), `{}`)
				if err != nil {
					f.t.Fatal(err)
				}
				return func(ctx context.Context) error { return f.s.DeletePolicy(ctx, id) }
			}},
		{method: "AppendLive", kinds: []string{KindLive, KindLive},
			prepare: func(f *logFixture) func(context.Context) error {
				a, b := f.node(nil), f.node(nil)
				on := true
				facts := []LiveRecord{
					{Node: b.ID, At: time.Now(), Endpoints: []string{"192.0.2.1:41641"}, Hostname: "b"},
					{Node: a.ID, Online: &on, At: time.Now(), DiscoKey: a.DiscoKey, Hostinfo: []byte(`{"Hostname":"a"}`), Hostname: "a"},
					{Node: 999_999, Online: &on, At: time.Now()}, // deleted meanwhile: dropped
				}
				return func(ctx context.Context) error {
					if err := f.s.JoinCluster(ctx, ClusterServer{ID: "test/1", Name: "test"}, time.Hour); err != nil && !errors.Is(err, ErrConflict) {
						return err
					}
					return f.s.AppendLive(ctx, facts)
				}
			}},
		{method: "DecideAuthRequest", kinds: []string{KindAuthDecided},
			prepare: func(f *logFixture) func(context.Context) error {
				id := f.name("authreq")
				now := time.Now()
				if err := f.s.PutAuthRequest(f.t.Context(), AuthRequest{ID: id, Kind: "registration", Data: []byte(`{}`), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
					f.t.Fatal(err)
				}
				return func(ctx context.Context) error {
					return f.s.DecideAuthRequest(ctx, id, "rejected", []byte(`{"reason":"no"}`), time.Time{})
				}
			},
			fail: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error {
					return f.s.DecideAuthRequest(ctx, "unknown", "rejected", nil, time.Time{})
				}
			},
			failErr: ErrNotFound},
		{method: "LeaveCluster", kinds: []string{KindServerGone},
			prepare: func(f *logFixture) func(context.Context) error {
				id := f.name("srv")
				if err := f.s.JoinCluster(f.t.Context(), ClusterServer{ID: id, Name: id}, time.Hour); err != nil {
					f.t.Fatal(err)
				}
				return func(ctx context.Context) error { return f.s.LeaveCluster(ctx, id) }
			},
			fail: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error { return f.s.LeaveCluster(ctx, "no-such-server") }
			}, failErr: ErrNotFound},
		{method: "DeclareServerGone", kinds: []string{KindServerGone},
			prepare: func(f *logFixture) func(context.Context) error {
				id := f.name("srv")
				if err := f.s.JoinCluster(f.t.Context(), ClusterServer{ID: id, Name: id}, -time.Second); err != nil {
					f.t.Fatal(err)
				}
				l, ok, err := f.s.AcquireLease(f.t.Context(), f.name("jobs"), "test/1", time.Hour)
				if err != nil || !ok {
					f.t.Fatalf("lease: %v %v", ok, err)
				}
				return func(ctx context.Context) error {
					gone, err := f.s.DeclareServerGone(ctx, id, l)
					if err == nil && !gone {
						err = errors.New("an expired server was not declared gone")
					}
					return err
				}
			}},
		{method: "DeclareServerGone", name: "live server", kinds: nil,
			prepare: func(f *logFixture) func(context.Context) error {
				id := f.name("srv")
				if err := f.s.JoinCluster(f.t.Context(), ClusterServer{ID: id, Name: id}, time.Hour); err != nil {
					f.t.Fatal(err)
				}
				l, ok, err := f.s.AcquireLease(f.t.Context(), f.name("jobs"), "test/1", time.Hour)
				if err != nil || !ok {
					f.t.Fatalf("lease: %v %v", ok, err)
				}
				return func(ctx context.Context) error {
					if gone, err := f.s.DeclareServerGone(ctx, id, l); err != nil || gone {
						return fmt.Errorf("a live server declared gone: %v %v", gone, err)
					}
					return nil
				}
			}},
		{method: "DeclareServerGone", name: "lease lost", kinds: nil,
			prepare: func(f *logFixture) func(context.Context) error {
				id := f.name("srv")
				if err := f.s.JoinCluster(f.t.Context(), ClusterServer{ID: id, Name: id}, -time.Second); err != nil {
					f.t.Fatal(err)
				}
				stale := Lease{Name: f.name("jobs"), Holder: "test/1", Epoch: 7}
				return func(ctx context.Context) error {
					if gone, err := f.s.DeclareServerGone(ctx, id, stale); err != nil || gone {
						return fmt.Errorf("a server declared gone without the lease: %v %v", gone, err)
					}
					return nil
				}
			}},
		{method: "SetPrimaries", kinds: []string{KindPrimary, KindPrimary},
			prepare: func(f *logFixture) func(context.Context) error {
				a := f.node(nil)
				l, ok, err := f.s.AcquireLease(f.t.Context(), f.name("jobs"), "test/1", time.Hour)
				if err != nil || !ok {
					f.t.Fatalf("lease: %v %v", ok, err)
				}
				choices := []RoutePrimary{
					{Prefix: netip.MustParsePrefix("10.1.0.0/24"), NodeID: a.ID},
					{Prefix: netip.MustParsePrefix("10.2.0.0/24"), NodeID: 999_999}, // gone: dropped
					{Prefix: netip.MustParsePrefix("10.3.0.0/24")},
				}
				return func(ctx context.Context) error {
					if ok, err := f.s.SetPrimaries(ctx, l, choices); err != nil || !ok {
						return fmt.Errorf("set primaries with the lease: %v %v", ok, err)
					}
					return nil
				}
			}},
		{method: "SetPrimaries", name: "lease lost", kinds: nil,
			prepare: func(f *logFixture) func(context.Context) error {
				a := f.node(nil)
				stale := Lease{Name: f.name("jobs"), Holder: "test/1", Epoch: 3}
				return func(ctx context.Context) error {
					ok, err := f.s.SetPrimaries(ctx, stale, []RoutePrimary{{Prefix: netip.MustParsePrefix("10.9.0.0/24"), NodeID: a.ID}})
					if err != nil || ok {
						return fmt.Errorf("set primaries without the lease: %v %v", ok, err)
					}
					return nil
				}
			}},
		{method: "DeletePolicy", name: "no such row", kinds: nil,
			prepare: func(f *logFixture) func(context.Context) error {
				return func(ctx context.Context) error { return f.s.DeletePolicy(ctx, 999_999) }
			}},
	}
}

// TestWriteMethodsClassified: every exported method of *Store is a read,
// a logged write or an unlogged write with a reason, so a new write cannot
// forget the change log unnoticed; and every logged write, called on
// PostgreSQL with the change log on, appends exactly its records in its
// own transaction, and nothing when it fails.
func TestWriteMethodsClassified(t *testing.T) {
	t.Parallel()
	typ := reflect.TypeFor[*Store]()
	known := map[string]int{}
	for _, m := range readMethods {
		known[m]++
	}
	for m, why := range unloggedWrites {
		known[m]++
		if why == "" {
			t.Errorf("unloggedWrites[%s] gives no reason", m)
		}
	}
	for m := range loggedWrites {
		known[m]++
	}
	for i := range typ.NumMethod() {
		name := typ.Method(i).Name
		switch known[name] {
		case 0:
			t.Errorf("*Store.%s is not classified: add it to readMethods, loggedWrites (and a case to logCases) or unloggedWrites (with the reason)", name)
		case 1:
		default:
			t.Errorf("*Store.%s is classified more than once", name)
		}
		delete(known, name)
	}
	for name := range known {
		t.Errorf("%s is classified but *Store has no such method", name)
	}
	cases := logCases()
	for m := range loggedWrites {
		if !slices.ContainsFunc(cases, func(c logCase) bool { return c.method == m }) {
			t.Errorf("logged write %s has no case in logCases", m)
		}
	}
	for _, m := range clusterWrites {
		if _, ok := loggedWrites[m]; !ok {
			t.Errorf("clusterWrites names %s, which is not in loggedWrites", m)
		}
	}

	e := pgEngine(t)
	s := e.open(t, func(o *Options) { o.ChangeLog = &ChangeLogOptions{Origin: "test/1"} })
	f := &logFixture{t: t, s: s}
	ctx := t.Context()
	for _, c := range cases {
		name := c.method
		if c.name != "" {
			name += "/" + c.name
		}
		t.Run(name, func(t *testing.T) {
			f.t = t
			for _, k := range c.kinds {
				if !slices.Contains(loggedWrites[c.method], k) {
					t.Fatalf("case appends %s, which loggedWrites[%s] does not allow", k, c.method)
				}
			}
			write := c.prepare(f)
			before := logHead(t, s)
			if err := write(ctx); err != nil {
				t.Fatal(err)
			}
			recs := changesSince(t, s, before)
			var kinds []string
			for _, r := range recs {
				kinds = append(kinds, r.Kind)
			}
			if !slices.Equal(kinds, c.kinds) {
				t.Fatalf("appended %v, want %v", kinds, c.kinds)
			}
			checkOneCommit(t, s, recs)
			checkRecords(t, s, c.method, recs)

			if c.fail == nil {
				return
			}
			write = c.fail(f)
			before = logHead(t, s)
			err := write(ctx)
			if err == nil || (c.failErr != nil && !errors.Is(err, c.failErr)) {
				t.Fatalf("failing call = %v, want %v", err, c.failErr)
			}
			if recs := changesSince(t, s, before); len(recs) != 0 || logHead(t, s) != before {
				t.Fatalf("a failed write appended %d records, head %d -> %d", len(recs), before, logHead(t, s))
			}
		})
	}
}

// logHead is the change log's head.
func logHead(t *testing.T, s *Store) int64 {
	t.Helper()
	h, err := s.ChangeLogHead(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// changesSince reads every record after seq, checking that they are
// numbered on from it without gaps up to the head.
func changesSince(t *testing.T, s *Store, seq int64) []Record {
	t.Helper()
	var out []Record
	for {
		recs, err := s.ReadChanges(t.Context(), seq, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Seq != seq+1 {
				t.Fatalf("record %d follows %d", r.Seq, seq)
			}
			seq = r.Seq
		}
		out = append(out, recs...)
		if len(recs) < 100 {
			return out
		}
	}
}

// checkOneCommit fails unless recs were written by the transaction that
// last moved the head, and that transaction also wrote the rows the
// records describe (when they still exist).
func checkOneCommit(t *testing.T, s *Store, recs []Record) {
	t.Helper()
	if len(recs) == 0 {
		return
	}
	xmin := func(q string, args ...any) string {
		t.Helper()
		var x string
		if err := s.read.QueryRowContext(t.Context(), q, args...).Scan(&x); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return x
	}
	head := xmin(`SELECT CAST(xmin AS TEXT) FROM change_log_head`)
	for _, r := range recs {
		if x := xmin(`SELECT CAST(xmin AS TEXT) FROM change_log WHERE seq = $1`, r.Seq); x != head {
			t.Errorf("record %d written by transaction %s, the head by %s", r.Seq, x, head)
		}
		var row, id string
		switch r.Kind {
		case KindNode:
			row, id = "nodes", fmt.Sprint(r.NodeID)
		case KindUser:
			row, id = "users", fmt.Sprint(r.UserID)
		default:
			continue
		}
		if x := xmin(`SELECT CAST(xmin AS TEXT) FROM `+row+` WHERE id = CAST($1 AS BIGINT)`, id); x != head {
			t.Errorf("record %d (%s %s) committed by transaction %s, the row by %s", r.Seq, r.Kind, id, head, x)
		}
	}
}

// checkRecords decodes recs and compares them with the rows as stored.
func checkRecords(t *testing.T, s *Store, method string, recs []Record) {
	t.Helper()
	ctx := t.Context()
	for _, r := range recs {
		if r.Origin != "test/1" || time.Since(r.At) > time.Minute || time.Since(r.At) < -time.Minute {
			t.Errorf("record %d: origin %q at %v", r.Seq, r.Origin, r.At)
		}
		switch r.Kind {
		case KindNode:
			n, registered, err := r.Node()
			if err != nil {
				t.Fatal(err)
			}
			want := strings.HasPrefix(method, "Register") || method == "UpdateNodeWithKey"
			if registered != want {
				t.Errorf("record %d: registered %v, want %v", r.Seq, registered, want)
			}
			stored, err := s.GetNode(ctx, n.ID)
			if err != nil {
				t.Fatal(err)
			}
			if n.ID != r.NodeID || !reflect.DeepEqual(n, stored) {
				t.Errorf("record %d (node %d):\n%+v\nstored\n%+v", r.Seq, r.NodeID, n, stored)
			}
		case KindUser:
			u, err := r.User()
			if err != nil {
				t.Fatal(err)
			}
			stored, err := s.GetUser(ctx, u.ID)
			if err != nil {
				t.Fatal(err)
			}
			if u.ID != r.UserID || !reflect.DeepEqual(u, stored) {
				t.Errorf("record %d (user %d):\n%+v\nstored\n%+v", r.Seq, r.UserID, u, stored)
			}
		case KindNodeDeleted, KindUserDeleted:
			id, err := r.DeletedID()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.GetNode(ctx, ids.NodeID(id)); r.Kind == KindNodeDeleted && !errors.Is(err, ErrNotFound) {
				t.Errorf("record %d: node %d still there (%v)", r.Seq, id, err)
			}
			if _, err := s.GetUser(ctx, ids.UserID(id)); r.Kind == KindUserDeleted && !errors.Is(err, ErrNotFound) {
				t.Errorf("record %d: user %d still there (%v)", r.Seq, id, err)
			}
		case KindLive:
			l, err := r.Live()
			if err != nil {
				t.Fatal(err)
			}
			stored, err := s.GetNode(ctx, l.Node)
			if err != nil {
				t.Fatal(err)
			}
			if l.Node != r.NodeID || !slices.Equal(stored.Endpoints, l.Endpoints) || stored.Hostname != l.Hostname {
				t.Errorf("record %d (live %d): %+v, stored %+v", r.Seq, l.Node, l, stored)
			}
			sessions, err := s.NodeSessions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if on := slices.Contains(sessions[l.Node], "test/1"); l.Online != nil && on != *l.Online {
				t.Errorf("record %d: node %d online %v, session row %v", r.Seq, l.Node, *l.Online, on)
			}
		case KindPrimary:
			p, err := r.Primary()
			if err != nil {
				t.Fatal(err)
			}
			snap, err := s.LoadSnapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(snap.Primaries, func(x RoutePrimary) bool { return x.Prefix == p.Prefix })
			if (p.NodeID == 0) != (i < 0) || i >= 0 && snap.Primaries[i].NodeID != p.NodeID {
				t.Errorf("record %d: primary %+v, stored %+v", r.Seq, p, snap.Primaries)
			}
		case KindServerGone:
			id, err := r.ServerGone()
			if err != nil {
				t.Fatal(err)
			}
			srvs, err := s.ClusterServers(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if slices.ContainsFunc(srvs, func(c ClusterServer) bool { return c.ID == id }) {
				t.Errorf("record %d: server %s still listed", r.Seq, id)
			}
		case KindPolicy:
			id, deleted, err := r.Policy()
			if err != nil {
				t.Fatal(err)
			}
			if deleted != (method == "DeletePolicy") || id == 0 {
				t.Errorf("record %d: policy %d deleted %v", r.Seq, id, deleted)
			}
		}
	}
}

// TestChangeLogOff: without ChangeLogOptions (and on SQLite, where they
// are refused) writes leave the change log alone: its head row is never
// written.
func TestChangeLogOff(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := t.Context()
		if e.name == "sqlite" {
			_, err := Open(ctx, func() Options { o := e.opts; o.ChangeLog = &ChangeLogOptions{}; return o }())
			if err == nil || !strings.Contains(err.Error(), "needs PostgreSQL") {
				t.Fatalf("Open SQLite with a change log = %v, want a refusal", err)
			}
		}
		s := e.open(t)
		if s.ChangeChannel() != "" && e.name == "sqlite" {
			t.Errorf("ChangeChannel on SQLite = %q", s.ChangeChannel())
		}
		f := &logFixture{t: t, s: s}
		for _, c := range logCases() {
			if slices.Contains(clusterWrites, c.method) {
				continue
			}
			if err := c.prepare(f)(ctx); err != nil {
				t.Fatalf("%s: %v (a write for several servers only? list it in clusterWrites)", c.method, err)
			}
		}
		if recs, err := s.ReadChanges(ctx, 0, 10); err != nil || len(recs) != 0 || logHead(t, s) != 0 {
			t.Fatalf("change log after writes without it: %d records, %v, head %d", len(recs), err, logHead(t, s))
		}
		if e.name == "postgres" {
			// xmin 1 is the bootstrap transaction's; a row the
			// migration inserted has the migration's. Any write since
			// would have replaced it.
			var updated bool
			if err := s.read.QueryRowContext(ctx, `SELECT CAST(xmin AS TEXT) <> (SELECT CAST(xmin AS TEXT) FROM schema_migrations WHERE version = 7) FROM change_log_head`).Scan(&updated); err != nil || updated {
				t.Errorf("change_log_head written without the change log: %v, %v", updated, err)
			}
		}
	})
}

// TestChangeChannel: the channel is derived from the schema, is a plain
// identifier, and differs between schemas.
func TestChangeChannel(t *testing.T) {
	a, b, def := changeChannel("headscale_a"), changeChannel("headscale_b"), changeChannel("")
	if a == b || def != changeChannel("public") || len(a) != 19 || strings.Trim(a[3:], "0123456789abcdef") != "" || !strings.HasPrefix(a, "hs_") {
		t.Errorf("channels %q %q %q", a, b, def)
	}
}

// TestChangeLogOrderUnderConcurrency: two stores on one database, 8
// writers of every kind of logged write (some failing on a conflict, some
// rolled back on purpose after numbering their records) and a reader
// polling for records after the last it saw: it sees every committed
// record once, numbered on without gaps, never one below one it saw.
func TestChangeLogOrderUnderConcurrency(t *testing.T) {
	t.Parallel()
	e := pgEngine(t)
	stores := []*Store{
		e.open(t, func(o *Options) { o.ChangeLog = &ChangeLogOptions{Origin: "a"} }),
		e.open(t, func(o *Options) { o.ChangeLog = &ChangeLogOptions{Origin: "b"} }),
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	shared, err := stores[0].CreateUser(ctx, User{Name: "shared"})
	if err != nil {
		t.Fatal(err)
	}
	start := logHead(t, stores[0])

	const writers, rounds = 8, 6
	var committed atomic.Int64 // records of successful writes
	boom := errors.New("rolled back on purpose")
	done := make(chan struct{})
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			s := stores[w%2]
			f := &logFixture{t: t, s: s}
			f.n.Store(int64(w) * 1_000_000)
			count := func(n int64, err error) error {
				if err == nil {
					committed.Add(n)
				}
				return err
			}
			var err error
			for r := range rounds {
				u, uerr := s.CreateUser(ctx, User{Name: f.name("u")})
				if err = count(1, uerr); err != nil {
					break
				}
				n, nerr := s.RegisterNode(ctx, testNode(f.name("n"), &u.ID), 0)
				if err = count(1, nerr); err != nil {
					break
				}
				// Every writer creates a user of one name: all but
				// the first fail with ErrConflict.
				if _, cerr := s.CreateUser(ctx, User{Name: fmt.Sprintf("taken-%d", r)}); cerr == nil {
					committed.Add(1)
				} else if !errors.Is(cerr, ErrConflict) {
					err = cerr
					break
				}
				// Everyone edits one row.
				if _, rerr := s.RenameUser(ctx, shared.ID, f.name("shared")); rerr != nil {
					err = rerr
					break
				}
				committed.Add(1)
				n.Hostname = "edited"
				if err = count(1, errOf(s.UpdateNode(ctx, n, 0))); err != nil {
					break
				}
				// Numbered, then rolled back: the numbers are given back.
				rb := s.writeTx(ctx, func(tx *sql.Tx) error {
					if err := s.appendChanges(ctx, tx, []Record{{Kind: KindUser, Data: []byte(`{"v":1}`)}}); err != nil {
						return err
					}
					return boom
				})
				if !errors.Is(rb, boom) {
					err = fmt.Errorf("rolled-back transaction: %v", rb)
					break
				}
				// Recorded, then failed.
				rb = s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
					if err := c.user(u); err != nil {
						return err
					}
					return boom
				})
				if !errors.Is(rb, boom) {
					err = fmt.Errorf("failed logTx: %v", rb)
					break
				}
				batch := []Node{testNode(f.name("b"), nil), testNode(f.name("b"), nil)}
				if err = count(2, func() error { _, err := s.RegisterNodes(ctx, batch); return err }()); err != nil {
					break
				}
				if err = count(1, s.DeleteNode(ctx, n.ID)); err != nil {
					break
				}
				if err = count(1, s.DeleteUser(ctx, u.ID)); err != nil {
					break
				}
				if err = count(1, s.SetPolicy(ctx, fmt.Sprintf(`{"r":%d}`, r))); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	go func() {
		for range writers {
			if err := <-errs; err != nil && ctx.Err() == nil {
				t.Error(err)
			}
		}
		close(done)
	}()

	// The reader alternates between the stores' pools. On a failure it
	// stops the writers and waits for them.
	last, reads := start, 0
	read := func() bool {
		recs, err := stores[reads%2].ReadChanges(ctx, last, 500)
		reads++
		if err != nil {
			t.Error(err)
			return false
		}
		for _, r := range recs {
			if r.Seq != last+1 {
				t.Errorf("record %d after %d: a gap or a step back", r.Seq, last)
				return false
			}
			last = r.Seq
		}
		return true
	}
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		if !read() {
			cancel()
			<-done
			return
		}
	}
	if !read() || t.Failed() { // everything committed before done
		return
	}
	head := logHead(t, stores[1])
	if last != head || head-start != committed.Load() {
		t.Fatalf("read up to %d, head %d, %d records committed after %d", last, head, committed.Load(), start)
	}
	t.Logf("%d records in %d reads", head-start, reads)
}

// TestSnapshotThenChanges: a snapshot taken while writers run, followed by
// the records after its head, gives the final state, and no record
// repeats what the snapshot already holds (each node or user record is a
// newer version than the one before, each create names a new row, each
// delete an existing one).
func TestSnapshotThenChanges(t *testing.T) {
	t.Parallel()
	e := pgEngine(t)
	s := e.open(t, func(o *Options) { o.ChangeLog = &ChangeLogOptions{Origin: "a"} })
	ctx := t.Context()

	const writers, rounds = 4, 15
	done := make(chan struct{})
	errs := make(chan error, writers)
	var snaps []Snapshot // the first writer's, read after done
	for w := range writers {
		go func() {
			f := &logFixture{t: t, s: s}
			f.n.Store(int64(w) * 1_000_000)
			var err error
			for range rounds {
				if w == 0 {
					var snap Snapshot
					if snap, err = s.LoadSnapshot(ctx); err != nil {
						break
					}
					snaps = append(snaps, snap)
				}
				var u User
				if u, err = s.CreateUser(ctx, User{Name: f.name("u")}); err != nil {
					break
				}
				var n Node
				if n, err = s.RegisterNode(ctx, testNode(f.name("n"), &u.ID), 0); err != nil {
					break
				}
				if _, err = s.RenameUser(ctx, u.ID, f.name("r")); err != nil {
					break
				}
				n.Hostname = "edited"
				if n, err = s.UpdateNodeIfVersion(ctx, n); err != nil {
					break
				}
				if _, err = s.RegisterNodes(ctx, []Node{testNode(f.name("b"), nil)}); err != nil {
					break
				}
				if err = s.DeleteNode(ctx, n.ID); err != nil {
					break
				}
				if err = s.DeleteUser(ctx, u.ID); err != nil {
					break
				}
				if err = s.SetPolicy(ctx, `{}`); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	go func() {
		for range writers {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		close(done)
	}()
	<-done
	if t.Failed() {
		return
	}
	final, err := s.LoadSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if final.Policy == nil || len(final.Nodes) != writers*rounds {
		t.Fatalf("final snapshot: policy %v, %d nodes", final.Policy, len(final.Nodes))
	}
	mid := 0
	for _, snap := range snaps {
		if snap.Seq > 0 && snap.Seq < final.Seq {
			mid++
		}
		users, nodes, policy := replay(t, s, snap)
		if want := byID(final.Users, func(u User) ids.UserID { return u.ID }); !reflect.DeepEqual(users, want) {
			t.Errorf("snapshot at %d + records: %d users, want %d", snap.Seq, len(users), len(want))
		}
		if want := byID(final.Nodes, func(n Node) ids.NodeID { return n.ID }); !reflect.DeepEqual(nodes, want) {
			t.Errorf("snapshot at %d + records: %d nodes, want %d", snap.Seq, len(nodes), len(want))
		}
		if policy != final.Policy.ID {
			t.Errorf("snapshot at %d + records: policy %d, want %d", snap.Seq, policy, final.Policy.ID)
		}
	}
	if mid == 0 {
		t.Fatalf("no snapshot of %d was taken while the writers ran", len(snaps))
	}
	t.Logf("%d snapshots (%d while writing), head %d", len(snaps), mid, final.Seq)
}

func byID[K comparable, V any](vs []V, id func(V) K) map[K]V {
	m := make(map[K]V, len(vs))
	for _, v := range vs {
		m[id(v)] = v
	}
	return m
}

// replay applies the records after snap to its users and nodes, failing
// on a record the snapshot already reflects.
func replay(t *testing.T, s *Store, snap Snapshot) (map[ids.UserID]User, map[ids.NodeID]Node, int64) {
	t.Helper()
	users := byID(snap.Users, func(u User) ids.UserID { return u.ID })
	nodes := byID(snap.Nodes, func(n Node) ids.NodeID { return n.ID })
	var policy int64
	if snap.Policy != nil {
		policy = snap.Policy.ID
	}
	for _, r := range changesSince(t, s, snap.Seq) {
		switch r.Kind {
		case KindNode:
			n, _, err := r.Node()
			if err != nil {
				t.Fatal(err)
			}
			if cur, ok := nodes[n.ID]; ok && cur.Version >= n.Version {
				t.Fatalf("record %d: node %d version %d, the snapshot at %d has %d", r.Seq, n.ID, n.Version, snap.Seq, cur.Version)
			}
			nodes[n.ID] = n
		case KindUser:
			u, err := r.User()
			if err != nil {
				t.Fatal(err)
			}
			if cur, ok := users[u.ID]; ok && cur.Version >= u.Version {
				t.Fatalf("record %d: user %d version %d, the snapshot at %d has %d", r.Seq, u.ID, u.Version, snap.Seq, cur.Version)
			}
			users[u.ID] = u
		case KindNodeDeleted:
			id, _ := r.DeletedID()
			if _, ok := nodes[ids.NodeID(id)]; !ok {
				t.Fatalf("record %d deletes node %d, which the snapshot at %d does not hold", r.Seq, id, snap.Seq)
			}
			delete(nodes, ids.NodeID(id))
		case KindUserDeleted:
			id, _ := r.DeletedID()
			if _, ok := users[ids.UserID(id)]; !ok {
				t.Fatalf("record %d deletes user %d, which the snapshot at %d does not hold", r.Seq, id, snap.Seq)
			}
			delete(users, ids.UserID(id))
		case KindPolicy:
			id, _, err := r.Policy()
			if err != nil {
				t.Fatal(err)
			}
			// Policy IDs are handed out at insert, not at commit: a
			// record may name a row older than the newest, which stays
			// the current policy (GetPolicy). Only the snapshot's own
			// row would be a repeat.
			if snap.Policy != nil && id == snap.Policy.ID {
				t.Fatalf("record %d: policy %d, which the snapshot at %d holds", r.Seq, id, snap.Seq)
			}
			policy = max(policy, id)
		}
	}
	return users, nodes, policy
}

// TestNodeVersionCAS: registration makes version 1, every edit one more
// (the periodic write of live fields none); UpdateNodeIfVersion writes
// only at the version read, on both engines.
func TestNodeVersionCAS(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := t.Context()
		s := e.open(t)
		n, err := s.RegisterNode(ctx, testNode("cas", nil), 0)
		if err != nil || n.Version != 1 {
			t.Fatalf("RegisterNode = version %d, %v; want 1", n.Version, err)
		}
		n.Hostname = "one"
		if err := errOf(s.UpdateNode(ctx, n, 0)); err != nil {
			t.Fatal(err)
		}
		if err := s.UpdateNodes(ctx, []Node{n}); err != nil {
			t.Fatal(err)
		}
		if err := s.SetLastSeen(ctx, map[ids.NodeID]time.Time{n.ID: time.Now()}); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetNode(ctx, n.ID)
		if err != nil || got.Version != 2 {
			t.Fatalf("after an edit and live writes: version %d, %v; want 2", got.Version, err)
		}
		stale := n // read at version 1
		stale.Hostname = "stale"
		if _, err := s.UpdateNodeIfVersion(ctx, stale); !errors.Is(err, ErrStale) {
			t.Fatalf("UpdateNodeIfVersion at an old version = %v, want ErrStale", err)
		}
		got.Hostname = "two"
		out, err := s.UpdateNodeIfVersion(ctx, got)
		if err != nil || out.Version != 3 || out.Hostname != "two" {
			t.Fatalf("UpdateNodeIfVersion = %+v, %v; want version 3", out, err)
		}
		if again, err := s.GetNode(ctx, n.ID); err != nil || !reflect.DeepEqual(again, out) {
			t.Fatalf("GetNode = %+v, %v; want %+v", again, err, out)
		}
		gone := out
		gone.ID = 999_999
		if _, err := s.UpdateNodeIfVersion(ctx, gone); !errors.Is(err, ErrNotFound) || errors.Is(err, ErrStale) {
			t.Fatalf("UpdateNodeIfVersion of a missing node = %v, want ErrNotFound", err)
		}
		ghost := ids.UserID(12345)
		bad := out
		bad.UserID = &ghost
		if _, err := s.UpdateNodeIfVersion(ctx, bad); !errors.Is(err, ErrNotFound) || errors.Is(err, ErrStale) {
			t.Fatalf("UpdateNodeIfVersion with an unknown user = %v, want ErrNotFound (foreign key)", err)
		}

		u, err := s.CreateUser(ctx, User{Name: "v"})
		if err != nil || u.Version != 1 {
			t.Fatalf("CreateUser = version %d, %v", u.Version, err)
		}
		if u, err = s.RenameUser(ctx, u.ID, "w"); err != nil || u.Version != 2 {
			t.Fatalf("RenameUser = version %d, %v", u.Version, err)
		}
		if u, err = s.SetUserGroups(ctx, u.ID, []string{"g"}); err != nil || u.Version != 3 {
			t.Fatalf("SetUserGroups = version %d, %v", u.Version, err)
		}
		if u, err = s.UpdateUserIdentity(ctx, u); err != nil || u.Version != 4 {
			t.Fatalf("UpdateUserIdentity = version %d, %v", u.Version, err)
		}
	})
}

// countTracer counts the statements a store runs on PostgreSQL (BEGIN
// and COMMIT included) while on.
type countTracer struct {
	on  atomic.Bool
	mu  sync.Mutex
	sql []string
}

func (c *countTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if c.on.Load() {
		c.mu.Lock()
		c.sql = append(c.sql, strings.Fields(d.SQL)[0])
		c.mu.Unlock()
	}
	return ctx
}

func (c *countTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// count runs fn and returns the statements it ran.
func (c *countTracer) count(fn func() error) ([]string, error) {
	c.mu.Lock()
	c.sql = nil
	c.mu.Unlock()
	c.on.Store(true)
	err := fn()
	c.on.Store(false)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sql, err
}

// TestChangeLogStatements: with the change log off, each logged write
// runs the statements it ran before the change log existed; on, the
// records cost one statement (head, records and notification in one),
// plus BEGIN and COMMIT for a write that was a single statement.
func TestChangeLogStatements(t *testing.T) {
	t.Parallel()
	// Statements per case with the change log off (as before it) and the
	// extra ones with it on.
	want := map[string][2]int{
		"RegisterNode":                       {1, 3},
		"RegisterNodeWithKey":                {5, 1}, // BEGIN, use key, rehash, insert, COMMIT
		"RegisterNodes":                      {1, 3},
		"RegisterNodes/more than one insert": {4, 1}, // BEGIN, 2 inserts, COMMIT
		"UpdateNode":                         {3, 1}, // BEGIN, update, COMMIT
		"UpdateNodeWithKey":                  {4, 1},
		"UpdateNodeIfVersion":                {3, 1}, // BEGIN, UPDATE ... RETURNING, COMMIT
		"DeleteNode":                         {1, 3},
		"DeletePreAuthKey":                   {1, 4}, // + unlinking the nodes
		"DeletePreAuthKey/no node registered with it": {1, 3}, // unlinking finds none: no records
		"CreateUser":         {1, 3},
		"RenameUser":         {1, 3},
		"UpdateUserIdentity": {1, 3},
		"SetUserGroups":      {1, 3},
		"DeleteUser":         {6, 2}, // BEGIN, lock, count, keys, user, COMMIT; + unlinking
		"DeleteUser/a tagged node registered with its key": {6, 2},
		"SetPolicy":                {1, 3},
		"InsertPolicy":             {1, 3},
		"DeletePolicy":             {1, 3},
		"DeletePolicy/no such row": {1, 2}, // nothing deleted: no records
	}
	got := map[string][2]int{}
	for i, logged := range []bool{false, true} {
		tr := &countTracer{}
		s := pgEngine(t).open(t, func(o *Options) {
			o.tracer = tr
			if logged {
				o.ChangeLog = &ChangeLogOptions{Origin: "a"}
			}
		})
		f := &logFixture{t: t, s: s}
		for _, c := range logCases() {
			if slices.Contains(clusterWrites, c.method) {
				continue // nothing to compare with: it refuses with the change log off
			}
			name := c.method
			if c.name != "" {
				name += "/" + c.name
			}
			write := c.prepare(f)
			stmts, err := tr.count(func() error { return write(t.Context()) })
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			n := got[name]
			n[i] = len(stmts)
			got[name] = n
			t.Logf("%s, change log %v: %v", name, logged, stmts)
		}
	}
	for name, n := range got {
		if w := want[name]; n[0] != w[0] || n[1]-n[0] != w[1] {
			t.Errorf("%s: %d statements off, %d on; want %d and %d more", name, n[0], n[1], w[0], w[1])
		}
	}
}

// TestChangeNotification: a logging write's commit notifies
// ChangeChannel with the new head; a failed write notifies nothing (the
// next notification after it carries the head of the next write).
func TestChangeNotification(t *testing.T) {
	t.Parallel()
	e := pgEngine(t)
	s := e.open(t, func(o *Options) { o.ChangeLog = &ChangeLogOptions{Origin: "a"} })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.opts.Postgres.connString())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if s.ChangeChannel() != changeChannel("") {
		t.Fatalf("ChangeChannel = %q, want the default schema's %q", s.ChangeChannel(), changeChannel(""))
	}
	if _, err := conn.Exec(ctx, "LISTEN "+s.ChangeChannel()); err != nil {
		t.Fatal(err)
	}
	next := func(want int64) {
		t.Helper()
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n.Channel != s.ChangeChannel() || n.Payload != fmt.Sprint(want) {
			t.Fatalf("notification %s %q, want %s %q", n.Channel, n.Payload, s.ChangeChannel(), fmt.Sprint(want))
		}
	}
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	next(1)
	if _, err := s.CreateUser(ctx, User{Name: "alice"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate = %v", err)
	}
	if _, err := s.RegisterNodes(ctx, []Node{testNode("a", &u.ID), testNode("b", &u.ID)}); err != nil {
		t.Fatal(err)
	}
	next(3)
	if _, err := s.ReadChanges(ctx, 0, 0); err == nil {
		t.Error("ReadChanges with limit 0 did not fail")
	}
}
