// Package authkey makes and checks the bearer secrets the server hands out:
// pre-auth keys for registering nodes and API keys for the admin API.
//
// A key reads "hskey-<kind>-<prefix>-<secret>", the format Headscale uses, so
// keys copied from Headscale's documentation and scripts look familiar. Only
// the prefix (to find the row) and a SHA-256 of the secret are stored. The
// secret carries 256 bits of randomness, so a fast hash is as safe as a slow
// one here and keeps thousands of registrations per second cheap.
package authkey

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Kinds of keys; the kind is part of the key text so a key of one kind is
// never accepted where the other is expected.
const (
	KindAuth = "auth"
	KindAPI  = "api"
)

const (
	prefixLen = 12
	secretLen = 64
)

// ErrMalformed reports a key whose text does not have the expected shape.
var ErrMalformed = errors.New("malformed key")

// Key is a freshly generated key. Full is shown to the user exactly once.
type Key struct {
	Full   string
	Prefix string
	Hash   []byte
}

// New generates a key of the given kind.
func New(kind string) (Key, error) {
	p, err := randomHex(prefixLen / 2)
	if err != nil {
		return Key{}, err
	}
	s, err := randomHex(secretLen / 2)
	if err != nil {
		return Key{}, err
	}
	return Key{
		Full:   "hskey-" + kind + "-" + p + "-" + s,
		Prefix: p,
		Hash:   Hash(s),
	}, nil
}

// Parse splits a key of the given kind into its prefix and secret.
func Parse(kind, full string) (prefix, secret string, err error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(full), "hskey-"+kind+"-")
	if !ok {
		return "", "", fmt.Errorf("%w: want hskey-%s-<prefix>-<secret>", ErrMalformed, kind)
	}
	prefix, secret, ok = strings.Cut(rest, "-")
	if !ok || len(prefix) != prefixLen || len(secret) != secretLen {
		return "", "", fmt.Errorf("%w: wrong length", ErrMalformed)
	}
	return prefix, secret, nil
}

// Hash returns the stored form of a secret.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// Verify reports whether secret matches the stored hash, in constant time.
func Verify(hash []byte, secret string) bool {
	return subtle.ConstantTimeCompare(hash, Hash(secret)) == 1
}

// Redacted returns the form of a key that is safe to list and log.
func Redacted(kind, prefix string) string {
	return "hskey-" + kind + "-" + prefix + "-***"
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("reading randomness: %w", err)
	}
	return hex.EncodeToString(b), nil
}
