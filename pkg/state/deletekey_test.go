package state

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestDeletePreAuthKeyKeepsNodesEditable: deleting the key a node
// registered with leaves the node working and editable (the database
// forgets the link, and so must memory, or the next edit writes the
// deleted key's ID back and is refused), on both engines.
func TestDeletePreAuthKeyKeepsNodesEditable(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		s, err := New(ctx, Options{Store: st, Alloc: ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.Prefix{}, ipalloc.Sequential)})
		if err != nil {
			t.Fatal(err)
		}
		u, err := s.CreateUser(ctx, store.User{Name: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		ak, err := authkey.New(authkey.KindAuth)
		if err != nil {
			t.Fatal(err)
		}
		k, err := st.CreatePreAuthKey(ctx, store.PreAuthKey{Prefix: ak.Prefix, Hash: ak.Hash, Reusable: true, UserID: &u.ID, Expiration: time.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		n, err := s.RegisterWithKey(ctx, RegisterParams{
			Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(),
			Hostinfo: &tailcfg.Hostinfo{Hostname: "laptop"}, Key: k,
		})
		if err != nil {
			t.Fatal(err)
		}
		if n.AuthKeyID != k.ID {
			t.Fatalf("node registered with key %d, records %d", k.ID, n.AuthKeyID)
		}
		if err := s.DeletePreAuthKey(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Node(n.ID); got.AuthKeyID != 0 {
			t.Errorf("after the key's deletion the node still names key %d", got.AuthKeyID)
		}
		if _, err := s.ExpireNode(ctx, n.ID, time.Time{}, false); err != nil {
			t.Errorf("expiring the node after its key was deleted: %v", err)
		}
		if _, err := s.RenameNode(ctx, n.ID, "renamed"); err != nil {
			t.Errorf("renaming the node after its key was deleted: %v", err)
		}
	})
}
