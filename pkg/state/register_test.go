package state

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
	"golang.org/x/crypto/bcrypt"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestValidateImportedAuthKeys: pre-auth keys stored the way the Headscale
// importer stores them follow the same rules as ours (expiry, single use),
// and only a bcrypt-hashed one asks for its hash to be replaced.
func TestValidateImportedAuthKeys(t *testing.T) {
	ctx := t.Context()
	s := newTestState(t)
	u, err := s.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	past, future := time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	bcryptOf := func(secret string) []byte {
		h, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	n := 0
	legacy := func(used, reusable bool, exp time.Time) string {
		n++
		plain := fmt.Sprintf("%012x", n) + strings.Repeat("ab", 18)
		p, h, err := authkey.LegacyAuth(plain)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.st.CreatePreAuthKey(ctx, store.PreAuthKey{Prefix: p, Hash: h, Legacy: true, UserID: &u.ID, Used: used, Reusable: reusable, Expiration: exp}); err != nil {
			t.Fatal(err)
		}
		return plain
	}
	hsNew := func(used, reusable bool, exp time.Time) string {
		n++
		prefix, secret := fmt.Sprintf("A-_%09d", n), "_-"+strings.Repeat("Zz9", 20)+"xy"
		if _, err := s.st.CreatePreAuthKey(ctx, store.PreAuthKey{Prefix: prefix, Hash: bcryptOf(secret), UserID: &u.ID, Used: used, Reusable: reusable, Expiration: exp}); err != nil {
			t.Fatal(err)
		}
		return "hskey-auth-" + prefix + "-" + secret
	}
	for _, tc := range []struct {
		name   string
		key    string
		want   error
		rehash bool
	}{
		{"legacy, valid", legacy(false, false, future), nil, false},
		{"legacy, reusable and used", legacy(true, true, future), nil, false},
		{"legacy, expired", legacy(false, true, past), ErrAuthKeyExpired, false},
		{"legacy, single-use and used", legacy(true, false, future), ErrAuthKeyUsed, false},
		{"legacy, never expires", legacy(false, true, time.Time{}), nil, false},
		{"legacy, wrong secret", legacy(false, true, future)[:47] + "0", ErrAuthKeyInvalid, false},
		{"headscale 0.28, valid", hsNew(false, false, future), nil, true},
		{"headscale 0.28, expired", hsNew(false, true, past), ErrAuthKeyExpired, false},
		{"headscale 0.28, used", hsNew(true, false, future), ErrAuthKeyUsed, false},
		{"headscale 0.28, wrong secret", hsNew(false, true, future)[:87] + "q", ErrAuthKeyInvalid, false},
		{"unknown legacy prefix", strings.Repeat("f", 48), ErrAuthKeyInvalid, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := s.ValidateAuthKey(ctx, tc.key)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ValidateAuthKey = %v, want %v", err, tc.want)
			}
			if err != nil {
				return
			}
			if got := k.Rehash.Key != 0; got != tc.rehash {
				t.Fatalf("rehash asked: %v, want %v", got, tc.rehash)
			}
			if tc.rehash {
				_, secret, _ := authkey.Parse(authkey.KindAuth, tc.key)
				if k.Rehash.Key != k.ID || !bytes.Equal(k.Rehash.From, k.Hash) || !bytes.Equal(k.Rehash.To, authkey.Hash(secret)) {
					t.Fatalf("rehash %+v does not replace key %d's bcrypt hash by the SHA-256 of its secret", k.Rehash, k.ID)
				}
			}
		})
	}
}

// TestRegisterInteractive: a registration without a pre-auth key creates
// the node for the approving user ("cli" or "oidc"); re-login as the same
// user keeps the node (ID, addresses, approved routes) with the new node
// key; an unknown user is refused and changes nothing. Another user's
// login is TestReloginAnotherUser.
func TestRegisterInteractive(t *testing.T) {
	ctx := t.Context()
	s := newTestState(t)
	alice, err := s.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	mk := key.NewMachine().Public()
	params := func(user ids.UserID, method string) InteractiveParams {
		return InteractiveParams{Machine: mk, NodeKey: key.NewNode().Public(), Hostinfo: &tailcfg.Hostinfo{Hostname: "laptop"}, Cap: 130, User: user, Method: method}
	}

	if _, err := s.RegisterInteractive(ctx, params(999, "")); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("unknown user: %v", err)
	}
	if _, ok := s.NodeByMachineKey(mk); ok {
		t.Fatal("a node was created for an unknown user")
	}

	p := params(alice.ID, "")
	p.Expiry = time.Now().Add(time.Hour).Truncate(time.Second)
	first, err := s.RegisterInteractive(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if first.UserID != alice.ID || first.RegisterMethod != "cli" || first.AuthKeyID != 0 || !first.Expiry.Equal(p.Expiry) || first.GivenName != "laptop" {
		t.Fatalf("registered: %+v", first)
	}
	route := netip.MustParsePrefix("10.1.0.0/24")
	if _, err := s.SetApprovedRoutes(ctx, first.ID, []netip.Prefix{route}); err != nil {
		t.Fatal(err)
	}

	p = params(alice.ID, "oidc")
	again, err := s.RegisterInteractive(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != first.ID || again.IPv4 != first.IPv4 || again.IPv6 != first.IPv6 || again.NodeKey != p.NodeKey ||
		again.RegisterMethod != "oidc" || len(again.ApprovedRoutes) != 1 || again.ApprovedRoutes[0] != route {
		t.Fatalf("same-user re-login: %+v, was %+v", again, first)
	}
	if n, ok := s.NodeByNodeKey(p.NodeKey); !ok || n.ID != first.ID {
		t.Fatal("the new node key does not find the node")
	}
}

// TestReloginAnotherUser: a machine has a node per user, as in Headscale.
// Each case is a sequence of logins of one machine; a login re-registers
// the node of an earlier step (same) or creates a new one (same = -1),
// and every node it does not re-register is left exactly as it was.
func TestReloginAnotherUser(t *testing.T) {
	type login struct {
		by      string // "cli", "oidc" (interactive), "key" (the user's pre-auth key), "tagkey"
		user    string // alice or bob; "" for tagkey
		keyOf   int    // reuse the node key of this earlier step; -1: a new node key
		same    int    // the step whose node this one re-registers; -1: a new node
		wantErr error
	}
	tests := []struct {
		name  string
		steps []login
		nodes int
	}{
		{"same user keeps the node", []login{{"cli", "alice", -1, -1, nil}, {"oidc", "alice", -1, 0, nil}}, 1},
		{"another user gets a new node, the old one stays", []login{{"cli", "alice", -1, -1, nil}, {"oidc", "bob", -1, -1, nil}}, 2},
		{"back to the first user: its node again", []login{{"cli", "alice", -1, -1, nil}, {"cli", "bob", -1, -1, nil}, {"oidc", "alice", -1, 0, nil}, {"cli", "bob", -1, 1, nil}}, 2},
		{"pre-auth key of another user: a new node", []login{{"key", "alice", -1, -1, nil}, {"key", "bob", -1, -1, nil}, {"key", "alice", -1, 0, nil}}, 2},
		{"interactive after a key of another user", []login{{"key", "alice", -1, -1, nil}, {"cli", "bob", -1, -1, nil}}, 2},
		{"a tagged node becomes the user's", []login{{"tagkey", "", -1, -1, nil}, {"oidc", "alice", -1, 0, nil}}, 1},
		{"a tagged key converts the one user node", []login{{"cli", "alice", -1, -1, nil}, {"tagkey", "", -1, 0, nil}}, 1},
		{"a tagged key and nodes of two users", []login{{"cli", "alice", -1, -1, nil}, {"cli", "bob", -1, -1, nil}, {"tagkey", "", -1, -1, ErrAmbiguousMachine}}, 2},
		{"the other node's node key", []login{{"cli", "alice", -1, -1, nil}, {"oidc", "bob", 0, -1, ErrNodeKeyInUse}}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := newTestState(t)
			users := map[string]ids.UserID{}
			for _, name := range []string{"alice", "bob"} {
				u, err := s.CreateUser(ctx, store.User{Name: name})
				if err != nil {
					t.Fatal(err)
				}
				users[name] = u.ID
			}
			mk := key.NewMachine().Public()
			var got []*Node // each step's node (nil when it failed)
			for i, st := range tc.steps {
				nk := key.NewNode().Public()
				if st.keyOf >= 0 {
					nk = got[st.keyOf].NodeKey
				}
				hi := &tailcfg.Hostinfo{Hostname: "laptop"}
				before := s.NodesByMachineKey(mk)
				var n *Node
				var err error
				switch uid := users[st.user]; st.by {
				case "cli", "oidc":
					n, err = s.RegisterInteractive(ctx, InteractiveParams{Machine: mk, NodeKey: nk, Hostinfo: hi, Cap: 130, User: uid, Method: st.by})
				case "key":
					n, err = s.RegisterWithKey(ctx, RegisterParams{Machine: mk, NodeKey: nk, Hostinfo: hi, Key: store.PreAuthKey{UserID: &uid, Reusable: true}})
				case "tagkey":
					n, err = s.RegisterWithKey(ctx, RegisterParams{Machine: mk, NodeKey: nk, Hostinfo: hi, Key: store.PreAuthKey{Tags: []string{"tag:server"}, Reusable: true}})
				}
				got = append(got, n)
				if !errors.Is(err, st.wantErr) {
					t.Fatalf("step %d (%s as %q): err = %v, want %v", i, st.by, st.user, err, st.wantErr)
				}
				var keep ids.NodeID // the node this step re-registered
				if err == nil {
					if st.same >= 0 {
						if n.ID != got[st.same].ID {
							t.Fatalf("step %d: node %d, want step %d's node %d kept", i, n.ID, st.same, got[st.same].ID)
						}
					} else {
						for _, b := range before {
							if b.ID == n.ID || b.IPv4 == n.IPv4 || b.IPv6 == n.IPv6 || b.GivenName == n.GivenName {
								t.Fatalf("step %d: new node %+v shares its ID, an address or its name with node %+v", i, n, b)
							}
						}
					}
					if n.NodeKey != nk || n.MachineKey != mk {
						t.Fatalf("step %d: node %+v, want node key %s", i, n, nk.ShortString())
					}
					switch st.by {
					case "tagkey":
						if !n.Tagged() || n.UserID != 0 {
							t.Fatalf("step %d: %+v, want a tagged node", i, n)
						}
					default:
						if n.Tagged() || n.UserID != users[st.user] {
							t.Fatalf("step %d: %+v, want %s's node", i, n, st.user)
						}
					}
					keep = n.ID
				}
				// Every other node of the machine is as it was.
				for _, b := range before {
					if b.ID == keep {
						continue
					}
					now, ok := s.Node(b.ID)
					if !ok || now.NodeKey != b.NodeKey || now.UserID != b.UserID || now.IPv4 != b.IPv4 || !slices.Equal(now.Tags, b.Tags) {
						t.Fatalf("step %d: node %d changed or went: %+v, was %+v", i, b.ID, now, b)
					}
				}
			}
			all := s.NodesByMachineKey(mk)
			if len(all) != tc.nodes {
				t.Fatalf("machine has %d nodes, want %d", len(all), tc.nodes)
			}
			if newest, ok := s.NodeByMachineKey(mk); !ok || newest.ID != all[len(all)-1].ID {
				t.Errorf("NodeByMachineKey = %+v, want the newest node %d", newest, all[len(all)-1].ID)
			}
			// What the store holds after a restart is the same.
			stored, err := s.st.ListNodes(ctx)
			if err != nil || len(stored) != tc.nodes {
				t.Fatalf("store holds %d nodes, %v; want %d", len(stored), err, tc.nodes)
			}
		})
	}
}
