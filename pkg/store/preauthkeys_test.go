package store

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
)

func TestPreAuthKeyCRUD(t *testing.T) { forEachEngine(t, testPreAuthKeyCRUD) }

func testPreAuthKeyCRUD(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		in   PreAuthKey
	}{
		{"full", PreAuthKey{
			Prefix: "hskey-auth-aaaa", Hash: []byte{0xde, 0xad, 0xbe, 0xef, 0x00}, UserID: &u.ID,
			Reusable: true, Ephemeral: true, Used: true, Tags: []string{"tag:server", "tag:prod"},
			Expiration: ts(1_800_000_000_000), CreatedAt: ts(1_700_000_000_000),
		}},
		// Tags-only key: no user, no tags list, never expires.
		{"minimal", PreAuthKey{Prefix: "hskey-auth-bbbb", Hash: make([]byte, 32), CreatedAt: ts(1_700_000_000_001)}},
	}
	var created []PreAuthKey
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.CreatePreAuthKey(ctx, tc.in)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.in
			want.ID = got.ID
			if !reflect.DeepEqual(got, want) {
				t.Errorf("CreatePreAuthKey = %+v, want %+v", got, want)
			}
			for name, get := range map[string]func() (PreAuthKey, error){
				"id":     func() (PreAuthKey, error) { return s.GetPreAuthKey(ctx, got.ID) },
				"prefix": func() (PreAuthKey, error) { return s.GetPreAuthKeyByPrefix(ctx, tc.in.Prefix) },
			} {
				if k, err := get(); err != nil || !reflect.DeepEqual(k, want) {
					t.Errorf("get by %s = %+v, %v; want %+v", name, k, err, want)
				}
			}
			created = append(created, got)
		})
	}
	if len(created) != len(tests) {
		t.Fatalf("created %d keys, want %d", len(created), len(tests))
	}
	if got, err := s.ListPreAuthKeys(ctx); err != nil || !reflect.DeepEqual(got, created) {
		t.Errorf("ListPreAuthKeys = %+v, %v; want %+v", got, err, created)
	}

	at := ts(1_750_000_000_000)
	if err := s.ExpirePreAuthKey(ctx, created[1].ID, at); err != nil {
		t.Fatal(err)
	}
	if k, err := s.GetPreAuthKey(ctx, created[1].ID); err != nil || !k.Expiration.Equal(at) {
		t.Errorf("after expire = %+v, %v", k, err)
	}
	if err := s.DeletePreAuthKey(ctx, created[1].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetPreAuthKey(ctx, created[1].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("after delete: %v, want ErrNotFound", err)
	}

	// A zero CreatedAt is filled in.
	k, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "now", Hash: []byte{1}})
	if err != nil || k.CreatedAt.IsZero() {
		t.Errorf("CreatePreAuthKey without CreatedAt = %+v, %v", k, err)
	}
}

func TestPreAuthKeyErrors(t *testing.T) { forEachEngine(t, testPreAuthKeyErrors) }

func testPreAuthKeyErrors(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	if _, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "dup", Hash: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		call    func() error
		want    error
		wantMsg string
	}{
		{"duplicate prefix", func() error {
			_, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "dup", Hash: []byte{2}})
			return err
		}, ErrConflict, "pre_auth_keys.prefix"},
		{"unknown user", func() error {
			_, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "x", Hash: []byte{2}, UserID: ptr[ids.UserID](42)})
			return err
		}, ErrNotFound, "does not exist"},
		{"get missing", func() error { _, err := s.GetPreAuthKey(ctx, 42); return err }, ErrNotFound, "42"},
		{"get prefix missing", func() error { _, err := s.GetPreAuthKeyByPrefix(ctx, "nope"); return err }, ErrNotFound, "nope"},
		{"expire missing", func() error { return s.ExpirePreAuthKey(ctx, 42, ts(1)) }, ErrNotFound, "42"},
		{"delete missing", func() error { return s.DeletePreAuthKey(ctx, 42) }, ErrNotFound, "42"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tc.want, tc.wantMsg)
			}
		})
	}
}

func TestDeletePreAuthKeyKeepsNode(t *testing.T) { forEachEngine(t, testDeletePreAuthKeyKeepsNode) }

func testDeletePreAuthKeyKeepsNode(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "p", Hash: []byte{1}, UserID: &u.ID})
	if err != nil {
		t.Fatal(err)
	}
	n := testNode("a", &u.ID)
	n.AuthKeyID = &key.ID
	n, err = s.RegisterNode(ctx, n, key.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePreAuthKey(ctx, key.ID); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetNode(ctx, n.ID)
	if err != nil {
		t.Fatalf("node gone after its key was deleted: %v", err)
	}
	if got.AuthKeyID != nil {
		t.Errorf("AuthKeyID = %d, want nil", *got.AuthKeyID)
	}
	n.AuthKeyID = nil
	if !reflect.DeepEqual(got, n) {
		t.Errorf("node changed: got %+v, want %+v", got, n)
	}
}

// TestRehashWithRegistration: a registration can replace its key's hash in
// the same transaction (a bcrypt hash imported from Headscale becoming the
// server's SHA-256), only while the hash is still the one checked; a
// registration that fails leaves the hash unchanged.
func TestRehashWithRegistration(t *testing.T) { forEachEngine(t, testRehashWithRegistration) }

func testRehashWithRegistration(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	bcryptHash := []byte("$2a$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ012345")
	sha := make([]byte, 32)
	sha[0] = 7
	other := make([]byte, 32)
	other[0] = 9
	hashOf := func(id ids.PreAuthKeyID) []byte {
		t.Helper()
		k, err := s.GetPreAuthKey(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return k.Hash
	}
	newKey := func(prefix string, reusable, used bool) PreAuthKey {
		t.Helper()
		k, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: prefix, Hash: bcryptHash, UserID: &u.ID, Reusable: reusable, Used: used})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(k.Hash, bcryptHash) {
			t.Fatalf("stored hash %q, want the bcrypt text as given", k.Hash)
		}
		return k
	}

	for i, tc := range []struct {
		name     string
		reusable bool
		from     []byte
		update   bool
		want     []byte
	}{
		{"new node, single-use key", false, bcryptHash, false, sha},
		{"new node, reusable key", true, bcryptHash, false, sha},
		{"re-registration", true, bcryptHash, true, sha},
		{"hash changed meanwhile: left alone", true, other, false, bcryptHash},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKey(fmt.Sprintf("key%d", i), tc.reusable, false)
			single := ids.PreAuthKeyID(0)
			if !tc.reusable {
				single = k.ID
			}
			n := testNode(fmt.Sprintf("node%d", i), &u.ID)
			n.AuthKeyID = &k.ID
			re := Rehash{Key: k.ID, From: tc.from, To: sha}
			if tc.update {
				var err error
				if n, err = s.RegisterNode(ctx, n, 0); err != nil {
					t.Fatal(err)
				}
				if err := errOf(s.UpdateNodeWithKey(ctx, n, single, re)); err != nil {
					t.Fatal(err)
				}
			} else if _, err := s.RegisterNodeWithKey(ctx, n, single, re); err != nil {
				t.Fatal(err)
			}
			if got := hashOf(k.ID); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("hash after registration = %x, want %x", got, tc.want)
			}
		})
	}

	t.Run("failed registration keeps the hash", func(t *testing.T) {
		k := newKey("usedkey", false, true)
		n := testNode("failing", &u.ID)
		_, err := s.RegisterNodeWithKey(ctx, n, k.ID, Rehash{Key: k.ID, From: bcryptHash, To: sha})
		if !errors.Is(err, ErrKeyUsed) {
			t.Fatalf("RegisterNodeWithKey = %v, want ErrKeyUsed", err)
		}
		if got := hashOf(k.ID); !reflect.DeepEqual(got, bcryptHash) {
			t.Fatalf("hash = %x after a failed registration, want it unchanged", got)
		}
	})
}
