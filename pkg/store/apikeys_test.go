package store

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestAPIKeyCRUD(t *testing.T) { forEachEngine(t, testAPIKeyCRUD) }

func testAPIKeyCRUD(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)

	tests := []struct {
		name string
		in   APIKey
	}{
		{"full", APIKey{Prefix: "hskey-api-aaaa", Hash: []byte("0123456789abcdef0123456789abcdef"),
			Expiration: ts(1_800_000_000_000), LastSeen: ts(1_700_000_000_999), CreatedAt: ts(1_700_000_000_000)}},
		{"never expires", APIKey{Prefix: "hskey-api-bbbb", Hash: []byte{0}, CreatedAt: ts(1_700_000_000_001)}},
	}
	var created []APIKey
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.CreateAPIKey(ctx, tc.in)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.in
			want.ID = got.ID
			if !reflect.DeepEqual(got, want) {
				t.Errorf("CreateAPIKey = %+v, want %+v", got, want)
			}
			if k, err := s.GetAPIKey(ctx, got.ID); err != nil || !reflect.DeepEqual(k, want) {
				t.Errorf("GetAPIKey = %+v, %v", k, err)
			}
			if k, err := s.GetAPIKeyByPrefix(ctx, tc.in.Prefix); err != nil || !reflect.DeepEqual(k, want) {
				t.Errorf("GetAPIKeyByPrefix = %+v, %v", k, err)
			}
			created = append(created, got)
		})
	}
	if len(created) != len(tests) {
		t.Fatalf("created %d keys, want %d", len(created), len(tests))
	}
	if got, err := s.ListAPIKeys(ctx); err != nil || !reflect.DeepEqual(got, created) {
		t.Errorf("ListAPIKeys = %+v, %v", got, err)
	}

	id := created[1].ID
	seen, exp := ts(1_750_000_000_000), ts(1_760_000_000_000)
	if err := s.TouchAPIKey(ctx, id, seen); err != nil {
		t.Fatal(err)
	}
	if err := s.ExpireAPIKey(ctx, id, exp); err != nil {
		t.Fatal(err)
	}
	k, err := s.GetAPIKey(ctx, id)
	if err != nil || !k.LastSeen.Equal(seen) || !k.Expiration.Equal(exp) {
		t.Errorf("after touch+expire = %+v, %v", k, err)
	}
	if err := s.DeleteAPIKey(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetAPIKey(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("after delete: %v", err)
	}
}

func TestAPIKeyErrors(t *testing.T) { forEachEngine(t, testAPIKeyErrors) }

func testAPIKeyErrors(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	if _, err := s.CreateAPIKey(ctx, APIKey{Prefix: "dup", Hash: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		call    func() error
		want    error
		wantMsg string
	}{
		{"duplicate prefix", func() error { _, err := s.CreateAPIKey(ctx, APIKey{Prefix: "dup"}); return err }, ErrConflict, "api_keys.prefix"},
		{"get missing", func() error { _, err := s.GetAPIKey(ctx, 5); return err }, ErrNotFound, "5"},
		{"get prefix missing", func() error { _, err := s.GetAPIKeyByPrefix(ctx, "nope"); return err }, ErrNotFound, "nope"},
		{"expire missing", func() error { return s.ExpireAPIKey(ctx, 5, time.Now()) }, ErrNotFound, "5"},
		{"touch missing", func() error { return s.TouchAPIKey(ctx, 5, time.Now()) }, ErrNotFound, "5"},
		{"delete missing", func() error { return s.DeleteAPIKey(ctx, 5) }, ErrNotFound, "5"},
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

// TestRehashAPIKey: an API key's bcrypt hash is replaced only while it is
// still the one that was checked; a missing key is no error.
func TestRehashAPIKey(t *testing.T) { forEachEngine(t, testRehashAPIKey) }

func testRehashAPIKey(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	bcryptHash := []byte("$2a$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ012345")
	k, err := s.CreateAPIKey(ctx, APIKey{Prefix: "fND2Ksx", Hash: bcryptHash})
	if err != nil {
		t.Fatal(err)
	}
	sha, other := make([]byte, 32), make([]byte, 32)
	sha[0], other[0] = 1, 2
	for _, tc := range []struct {
		name     string
		from, to []byte
		want     []byte
	}{
		{"hash changed meanwhile: left alone", other, sha, bcryptHash},
		{"rehash", bcryptHash, sha, sha},
		{"second rehash from the old hash: no effect", bcryptHash, other, sha},
	} {
		if err := s.RehashAPIKey(ctx, k.ID, tc.from, tc.to); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := s.GetAPIKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Hash) != string(tc.want) {
			t.Fatalf("%s: hash = %x, want %x", tc.name, got.Hash, tc.want)
		}
	}
	if err := s.RehashAPIKey(ctx, k.ID+100, sha, other); err != nil {
		t.Fatalf("rehash of a missing key: %v", err)
	}
}
