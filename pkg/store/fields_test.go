package store

import (
	"reflect"
	"testing"
	"time"
)

// allSet fails the test when v (a struct) has a zero field not named in
// storeSets: a field the round-trip tests below do not fill cannot be
// checked, so a new field must be given a value here.
func allSet(t *testing.T, v any, storeSets map[string]bool) {
	t.Helper()
	rv := reflect.ValueOf(v)
	for i := range rv.NumField() {
		name := rv.Type().Field(i).Name
		if rv.Field(i).IsZero() && !storeSets[name] {
			t.Fatalf("%s.%s is zero in the round-trip test: give it a value", rv.Type().Name(), name)
		}
	}
}

// sameFields fails the test for each field of want (a struct) that got
// does not carry, except those the store sets itself.
func sameFields(t *testing.T, got, want any, storeSets map[string]bool) {
	t.Helper()
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range w.NumField() {
		name := w.Type().Field(i).Name
		if storeSets[name] {
			if g.Field(i).IsZero() {
				t.Errorf("%s.%s: the store should set it", w.Type().Name(), name)
			}
			continue
		}
		if !reflect.DeepEqual(g.Field(i).Interface(), w.Field(i).Interface()) {
			t.Errorf("%s.%s does not survive the database: got %v, want %v (add it to the columns, scan and args)", w.Type().Name(), name, g.Field(i), w.Field(i))
		}
	}
}

// TestRecordFieldsRoundTrip guards the hand-written column lists: every
// field of User, PreAuthKey, APIKey and Node, set to a non-zero value,
// comes back from the database unchanged, except the fields the store sets
// itself (IDs, UpdatedAt). A new field fails here until it is stored.
func TestRecordFieldsRoundTrip(t *testing.T) { forEachEngine(t, testRecordFieldsRoundTrip) }

func testRecordFieldsRoundTrip(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	at := ts(1_700_000_000_123)

	u := User{Name: "alice", DisplayName: "Alice", Email: "alice@example.com", ProfilePicURL: "https://example.com/a.png",
		Provider: "oidc", ProviderID: "sub-1", Groups: []string{"eng", "/vpn"}, CreatedAt: at}
	userSets := map[string]bool{"ID": true, "Version": true}
	allSet(t, u, userSets)
	cu, err := s.CreateUser(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	gu, err := s.GetUser(ctx, cu.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameFields(t, gu, u, userSets)

	k := PreAuthKey{Prefix: "p1", Hash: []byte{1, 2}, Legacy: true, UserID: &cu.ID, Reusable: true, Ephemeral: true, Used: true,
		Tags: []string{"tag:a"}, Expiration: at.Add(1000 * time.Millisecond), CreatedAt: at}
	keySets := map[string]bool{"ID": true}
	allSet(t, k, keySets)
	ck, err := s.CreatePreAuthKey(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	gk, err := s.GetPreAuthKey(ctx, ck.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameFields(t, gk, k, keySets)

	a := APIKey{Prefix: "a1", Hash: []byte{3}, Expiration: at.Add(2000 * time.Millisecond), LastSeen: at.Add(3000 * time.Millisecond), CreatedAt: at}
	apiSets := map[string]bool{"ID": true}
	allSet(t, a, apiSets)
	ca, err := s.CreateAPIKey(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	ga, err := s.GetAPIKey(ctx, ca.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameFields(t, ga, a, apiSets)

	n := Node{MachineKey: "mkey:1", NodeKey: "nodekey:1", DiscoKey: "discokey:1", Endpoints: []string{"192.0.2.1:41641"},
		Hostinfo: []byte(`{"Hostname":"h"}`), IPv4: "100.64.0.1", IPv6: "fd7a:115c:a1e0::1", Hostname: "h", GivenName: "g",
		UserID: &cu.ID, RegisterMethod: "authkey", Tags: []string{"tag:a"}, AuthKeyID: &ck.ID, Ephemeral: true,
		LastSeen: at.Add(4000 * time.Millisecond), Expiry: at.Add(5000 * time.Millisecond), ApprovedRoutes: []string{"10.0.0.0/24"}, PendingApproval: true, CreatedAt: at}
	nodeSets := map[string]bool{"ID": true, "UpdatedAt": true, "Version": true}
	allSet(t, n, nodeSets)
	cn, err := s.RegisterNode(ctx, n, 0)
	if err != nil {
		t.Fatal(err)
	}
	gn, err := s.GetNode(ctx, cn.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameFields(t, gn, n, nodeSets)
}
