package state

import (
	"testing"

	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestDeleteUserUnlinksMovedNodes: a node registered with alice's key and
// then given to bob loses the link to that key when alice is deleted, in
// memory as in the store, so that editing it afterwards works.
func TestDeleteUserUnlinksMovedNodes(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *store.Store) {
		s := openState(t, st, false)
		ctx := t.Context()
		alice, err := s.CreateUser(ctx, store.User{Name: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		bob, err := s.CreateUser(ctx, store.User{Name: "bob"})
		if err != nil {
			t.Fatal(err)
		}
		k, err := st.CreatePreAuthKey(ctx, store.PreAuthKey{Prefix: "k", Hash: []byte{1}, UserID: &alice.ID, Reusable: true})
		if err != nil {
			t.Fatal(err)
		}
		n, err := s.RegisterWithKey(ctx, RegisterParams{Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(),
			Hostinfo: &tailcfg.Hostinfo{Hostname: "laptop"}, Key: k})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetOwner(ctx, n.ID, bob.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteUser(ctx, alice.ID); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Node(n.ID); got.AuthKeyID != 0 {
			t.Errorf("the node still names the deleted user's key %d", got.AuthKeyID)
		}
		if _, err := s.RenameNode(ctx, n.ID, "renamed"); err != nil {
			t.Fatalf("renaming the node after its key's user was deleted: %v", err)
		}
	})
}
