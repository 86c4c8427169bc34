package state

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// nodeField says where a Node field comes from and whether it is stored.
type nodeField int

const (
	written  nodeField = iota + 1 // set by the store write (admin edit, registration); stored
	session                       // updated in memory by map sessions between writes; stored by Flush
	reported                      // reported by the client in map requests, set by registration; stored
	derived                       // in memory only, derived from a stored field on load
	runtime                       // in memory only, never stored
)

// nodeFields classifies every Node field. A new field fails
// TestNodeFieldClasses until it is added here, and then keepLiveFields and
// the store conversions must agree with its class.
var nodeFields = map[string]nodeField{
	"ID":              written,
	"MachineKey":      written,
	"NodeKey":         written,
	"DiscoKey":        session,
	"Endpoints":       session,
	"HomeDERP":        session, // also derived from Hostinfo.NetInfo on load
	"Hostinfo":        reported,
	"IPv4":            written,
	"IPv6":            written,
	"Hostname":        reported,
	"GivenName":       written,
	"UserID":          written,
	"Tags":            written,
	"Ephemeral":       written,
	"AuthKeyID":       written,
	"RegisterMethod":  written,
	"Cap":             reported, // not stored: the client sends it with every request
	"CreatedAt":       written,
	"LastSeen":        session,
	"Expiry":          written,
	"ApprovedRoutes":  written,
	"PendingApproval": written,
	"Version":         written,
	"Online":          runtime,
	"PrimaryRoutes":   runtime,
}

// notStored are the Node fields the store conversions leave out.
var notStored = map[string]string{
	"Cap":           "the client sends it with every request",
	"Online":        "runtime",
	"PrimaryRoutes": "runtime, elected from approved routes",
}

// fullNode returns a Node with every field set to a non-zero value that
// survives the store conversions.
func fullNode(t *testing.T) *Node {
	t.Helper()
	at := time.UnixMilli(1_700_000_000_123).UTC()
	n := &Node{
		ID:              11,
		MachineKey:      key.NewMachine().Public(),
		NodeKey:         key.NewNode().Public(),
		DiscoKey:        key.NewDisco().Public(),
		Endpoints:       []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:41641")},
		HomeDERP:        9,
		Hostinfo:        &tailcfg.Hostinfo{Hostname: "h", NetInfo: &tailcfg.NetInfo{PreferredDERP: 9}},
		IPv4:            netip.MustParseAddr("100.64.0.1"),
		IPv6:            netip.MustParseAddr("fd7a:115c:a1e0::1"),
		Hostname:        "h",
		GivenName:       "given",
		UserID:          3,
		Tags:            []string{"tag:a"},
		Ephemeral:       true,
		AuthKeyID:       5,
		RegisterMethod:  "authkey",
		Cap:             120,
		CreatedAt:       at,
		LastSeen:        at.Add(time.Second),
		Expiry:          at.Add(time.Hour),
		ApprovedRoutes:  []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")},
		PendingApproval: true,
		Version:         4,
		Online:          true,
		PrimaryRoutes:   []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")},
	}
	v := reflect.ValueOf(n).Elem()
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("fullNode leaves Node.%s zero: set it", v.Type().Field(i).Name)
		}
	}
	return n
}

// TestNodeFieldClasses: every Node field is classified, and keepLiveFields
// copies exactly the fields that move on in memory between writes.
func TestNodeFieldClasses(t *testing.T) {
	typ := reflect.TypeFor[Node]()
	names := map[string]bool{}
	for i := range typ.NumField() {
		f := typ.Field(i)
		names[f.Name] = true
		if _, ok := nodeFields[f.Name]; !ok {
			t.Errorf("Node.%s is not classified in nodeFields: say whether a store write sets it or it moves on in memory (and update keepLiveFields)", f.Name)
		}
	}
	for name := range nodeFields {
		if !names[name] {
			t.Errorf("nodeFields classifies %s, which Node no longer has", name)
		}
	}
	for _, registered := range []bool{false, true} {
		cur := fullNode(t)
		var n Node
		keepLiveFields(&n, cur, registered)
		v := reflect.ValueOf(n)
		for i := range typ.NumField() {
			name := typ.Field(i).Name
			class := nodeFields[name]
			want := class == session || class == runtime || (class == reported && !registered)
			if got := !v.Field(i).IsZero(); got != want {
				t.Errorf("registered=%v: keepLiveFields copies %s = %v, want %v (class %d)", registered, name, got, want, class)
			}
		}
	}
}

// TestNodeStoreConversion: every stored Node field survives nodeToStore and
// nodeFromStore; those left out are listed in notStored.
func TestNodeStoreConversion(t *testing.T) {
	n := fullNode(t)
	back, err := nodeFromStore(nodeToStore(n))
	if err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeFor[Node]()
	want, got := reflect.ValueOf(n).Elem(), reflect.ValueOf(back).Elem()
	for i := range typ.NumField() {
		name := typ.Field(i).Name
		_, skipped := notStored[name]
		same := reflect.DeepEqual(want.Field(i).Interface(), got.Field(i).Interface())
		switch {
		case skipped && !got.Field(i).IsZero():
			t.Errorf("Node.%s is listed in notStored but survives the store round trip", name)
		case !skipped && !same:
			t.Errorf("Node.%s does not survive the store round trip (%v, got %v): convert it in nodeToStore/nodeFromStore or list it in notStored", name, want.Field(i), got.Field(i))
		}
	}
}

// TestStoreNodeConversion: every store.Node field is read by nodeFromStore
// and written back by nodeToStore, unless listed as the store's own.
func TestStoreNodeConversion(t *testing.T) {
	storeOwned := map[string]string{"UpdatedAt": "set by the store on every write"}
	n := fullNode(t)
	sn := nodeToStore(n)
	sn.UpdatedAt = time.Now()
	v := reflect.ValueOf(sn)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if _, ok := storeOwned[name]; !ok && v.Field(i).IsZero() {
			t.Errorf("nodeToStore leaves store.Node.%s zero: convert it, or list it in storeOwned", name)
		}
	}
	back, err := nodeFromStore(sn)
	if err != nil {
		t.Fatal(err)
	}
	again := nodeToStore(back)
	again.UpdatedAt = sn.UpdatedAt
	if !reflect.DeepEqual(sn, again) {
		t.Errorf("store.Node round trip differs:\n got %+v\nwant %+v", again, sn)
	}
}

// TestUserConversion: every store.User field reaches User or is listed as
// not needed in memory.
func TestUserConversion(t *testing.T) {
	notInMemory := map[string]string{"Version": "set by the store; the single server does not use it (issue 17)"}
	su := store.User{ID: 3, Name: "n", DisplayName: "d", Email: "e@x", ProfilePicURL: "https://p", Provider: "oidc", ProviderID: "sub",
		Groups: []string{"eng"}, CreatedAt: time.Now(), Version: 2}
	sv := reflect.ValueOf(su)
	for i := range sv.NumField() {
		if sv.Field(i).IsZero() {
			t.Fatalf("set store.User.%s in this test", sv.Type().Field(i).Name)
		}
	}
	u := reflect.ValueOf(*userFromStore(su))
	for i := range sv.NumField() {
		name := sv.Type().Field(i).Name
		f := u.FieldByName(name)
		_, skipped := notInMemory[name]
		switch {
		case skipped && f.IsValid():
			t.Errorf("store.User.%s is listed in notInMemory but User has it", name)
		case !skipped && (!f.IsValid() || !reflect.DeepEqual(f.Interface(), sv.Field(i).Interface())):
			t.Errorf("store.User.%s does not reach User: convert it in userFromStore or list it in notInMemory", name)
		}
	}
	if u.NumField() != sv.NumField()-len(notInMemory) {
		t.Errorf("User has %d fields, store.User %d of which %d not in memory: a User field has no source", u.NumField(), sv.NumField(), len(notInMemory))
	}
}
