package store

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestUserCRUD(t *testing.T) { forEachEngine(t, testUserCRUD) }

func testUserCRUD(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)

	full := User{
		Name: "alice", DisplayName: "Alice A.", Email: "alice@example.com",
		ProfilePicURL: "https://example.com/a.png", Provider: "https://idp.example.com", ProviderID: "sub-1",
		CreatedAt: ts(1_700_000_000_123),
	}
	alice, err := s.CreateUser(ctx, full)
	if err != nil {
		t.Fatal(err)
	}
	full.ID, full.Version = alice.ID, 1
	if !reflect.DeepEqual(alice, full) {
		t.Errorf("CreateUser = %+v, want %+v", alice, full)
	}
	bob, err := s.CreateUser(ctx, User{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if bob.ID <= alice.ID || bob.CreatedAt.IsZero() || bob.Provider != "" {
		t.Errorf("CreateUser(bob) = %+v", bob)
	}

	for _, tc := range []struct {
		name string
		get  func() (User, error)
		want User
	}{
		{"by id", func() (User, error) { return s.GetUser(ctx, alice.ID) }, alice},
		{"by name", func() (User, error) { return s.GetUserByName(ctx, "bob") }, bob},
	} {
		got, err := tc.get()
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}

	list, err := s.ListUsers(ctx)
	if err != nil || !reflect.DeepEqual(list, []User{alice, bob}) {
		t.Errorf("ListUsers = %+v, %v", list, err)
	}

	renamed, err := s.RenameUser(ctx, bob.ID, "robert")
	if err != nil || renamed.Name != "robert" || renamed.ID != bob.ID {
		t.Errorf("RenameUser = %+v, %v", renamed, err)
	}
	if _, err := s.GetUserByName(ctx, "bob"); !errors.Is(err, ErrNotFound) {
		t.Errorf("old name lookup = %v, want ErrNotFound", err)
	}

	if err := s.DeleteUser(ctx, bob.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetUser(ctx, bob.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetUser after delete = %v, want ErrNotFound", err)
	}
	// Ids are never reused.
	carol, err := s.CreateUser(ctx, User{Name: "carol"})
	if err != nil || carol.ID <= bob.ID {
		t.Errorf("CreateUser after delete = %+v, %v; want id > %d", carol, err, bob.ID)
	}
}

func TestUserErrors(t *testing.T) { forEachEngine(t, testUserErrors) }

func testUserErrors(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	alice, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateUser(ctx, User{Name: "bob"}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		call    func() error
		want    error
		wantMsg string
	}{
		{"create duplicate", func() error { _, err := s.CreateUser(ctx, User{Name: "alice"}); return err }, ErrConflict, "users.name already exists"},
		{"rename to taken", func() error { _, err := s.RenameUser(ctx, alice.ID, "bob"); return err }, ErrConflict, "users.name"},
		{"rename missing", func() error { _, err := s.RenameUser(ctx, 999, "zed"); return err }, ErrNotFound, "999"},
		{"get missing", func() error { _, err := s.GetUser(ctx, 999); return err }, ErrNotFound, "get user 999"},
		{"get by name missing", func() error { _, err := s.GetUserByName(ctx, "zed"); return err }, ErrNotFound, `"zed"`},
		{"delete missing", func() error { return s.DeleteUser(ctx, 999) }, ErrNotFound, "999"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("err = %q, want it to mention %q", err, tc.wantMsg)
			}
			if strings.Contains(err.Error(), "constraint failed") {
				t.Errorf("err = %q leaks the raw SQLite message", err)
			}
		})
	}
}

func TestDeleteUserWithNodes(t *testing.T) { forEachEngine(t, testDeleteUserWithNodes) }

func testDeleteUserWithNodes(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "p1", Hash: []byte{1}, UserID: &u.ID})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []Node
	for _, name := range []string{"a", "b"} {
		n := testNode(name, &u.ID)
		n.AuthKeyID = &key.ID
		n, err := s.RegisterNode(ctx, n, 0)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}

	err = s.DeleteUser(ctx, u.ID)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "user still owns 2 nodes") {
		t.Fatalf("DeleteUser = %v, want ErrConflict mentioning 2 nodes", err)
	}
	if _, err := s.GetUser(ctx, u.ID); err != nil {
		t.Fatalf("user gone after refused delete: %v", err)
	}
	if _, err := s.GetPreAuthKey(ctx, key.ID); err != nil {
		t.Fatalf("key gone after refused delete: %v", err)
	}

	for _, n := range nodes {
		if err := s.DeleteNode(ctx, n.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteUser(ctx, u.ID); err != nil {
		t.Fatalf("DeleteUser without nodes: %v", err)
	}
	if _, err := s.GetPreAuthKey(ctx, key.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("user's pre-auth key survived DeleteUser: %v", err)
	}
}

func TestUserProviderIdentity(t *testing.T) { forEachEngine(t, testUserProviderIdentity) }

func testUserProviderIdentity(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)

	local, err := s.CreateUser(ctx, User{Name: "local"})
	if err != nil {
		t.Fatal(err)
	}
	if local.Groups != nil {
		t.Errorf("a CLI user has groups %q", local.Groups)
	}
	in := User{Name: "alice", Email: "alice@example.com", Provider: "oidc", ProviderID: "https://idp.example.com/sub-1",
		Groups: []string{"/vpn-admins", "Domain Users", "eng@example.com"}}
	alice, err := s.CreateUser(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(alice.Groups, in.Groups) {
		t.Errorf("CreateUser groups = %q, want %q", alice.Groups, in.Groups)
	}

	got, err := s.GetUserByProvider(ctx, "oidc", "https://idp.example.com/sub-1")
	if err != nil || !reflect.DeepEqual(got, alice) {
		t.Errorf("GetUserByProvider = %+v, %v; want %+v", got, err, alice)
	}
	for _, q := range [][2]string{{"oidc", "https://idp.example.com/sub-2"}, {"other", "https://idp.example.com/sub-1"}, {"", ""}} {
		if _, err := s.GetUserByProvider(ctx, q[0], q[1]); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetUserByProvider(%q, %q) = %v, want ErrNotFound", q[0], q[1], err)
		}
	}

	// A later login: new groups and profile; the name stays.
	upd := alice
	upd.Name = "ignored"
	upd.DisplayName, upd.Email, upd.ProfilePicURL = "Alice A.", "alice@example.org", "https://example.com/a.png"
	upd.Groups = []string{"eng"}
	updated, err := s.UpdateUserIdentity(ctx, upd)
	if err != nil {
		t.Fatal(err)
	}
	want := upd
	want.Name = "alice"
	want.Version = upd.Version + 1
	if !reflect.DeepEqual(updated, want) {
		t.Errorf("UpdateUserIdentity = %+v, want %+v", updated, want)
	}

	cleared, err := s.SetUserGroups(ctx, alice.ID, nil)
	if err != nil || cleared.Groups != nil || cleared.Email != "alice@example.org" {
		t.Errorf("SetUserGroups(nil) = %+v, %v", cleared, err)
	}
	set, err := s.SetUserGroups(ctx, local.ID, []string{"a", "b"})
	if err != nil || !reflect.DeepEqual(set.Groups, []string{"a", "b"}) {
		t.Errorf("SetUserGroups = %+v, %v", set, err)
	}
	// Stored, not only returned.
	list, err := s.ListUsers(ctx)
	if err != nil || len(list) != 2 || !reflect.DeepEqual(list[0].Groups, []string{"a", "b"}) || list[1].Groups != nil {
		t.Errorf("ListUsers = %+v, %v", list, err)
	}

	if _, err := s.SetUserGroups(ctx, 999, []string{"x"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetUserGroups(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateUserIdentity(ctx, User{ID: 999}); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateUserIdentity(unknown) = %v, want ErrNotFound", err)
	}
}
