// Package authkey makes and checks the bearer secrets the server hands out:
// pre-auth keys for registering nodes and API keys for the admin API.
//
// A key the server makes reads "hskey-<kind>-<prefix>-<secret>" with a
// 12-hex-character prefix and a 64-hex-character secret, the format Headscale
// 0.28+ uses, so keys copied from Headscale's documentation and scripts look
// familiar. Only the prefix (to find the row) and a SHA-256 of the secret are
// stored. The secret carries 256 bits of randomness, so a fast hash is as
// safe as a slow one here and keeps thousands of registrations per second
// cheap.
//
// Keys a Headscale 0.23–0.29 deployment handed out keep working after its
// database is imported. Parse accepts every form:
//
//   - "hskey-<kind>-" + 12 + "-" + 64 characters, ours (hex) and Headscale
//     0.28+'s (base64url, A-Za-z0-9_-). Since "-" may appear inside
//     Headscale's prefix or secret, the text is split by fixed lengths, never
//     at a "-".
//   - A pre-auth key of Headscale up to 0.27: exactly 48 lowercase hex
//     characters. Headscale kept it in plaintext; the importer stores its
//     first 12 characters as the prefix and the SHA-256 of the other 36 as
//     the hash, so no plaintext is kept (see LegacyAuth).
//   - An API key of Headscale up to 0.27 (still accepted by 0.28+): a
//     7-character prefix, ".", a 32-character secret, both base64url.
//
// The stored hash is either our 32-byte SHA-256 of the secret or, for keys
// imported from Headscale 0.28+ and all imported API keys, Headscale's bcrypt
// hash of it ("$2a$10$..."). Verify checks either. After a bcrypt hash
// matched once, callers replace it by Hash(secret) (NeedsRehash), so the
// tens of milliseconds bcrypt costs are paid once per key, not once per
// registration.
package authkey

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"
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

	// legacyAuthLen is the length of a Headscale ≤0.27 pre-auth key (24
	// random bytes in hex); its first prefixLen characters are the prefix.
	legacyAuthLen = 48
	// legacyAPIPrefixLen and legacyAPISecretLen are the two parts of a
	// Headscale ≤0.27 API key "<prefix>.<secret>".
	legacyAPIPrefixLen = 7
	legacyAPISecretLen = 32
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

// Parse splits a key of the given kind into its prefix and secret. It
// accepts every form the package documentation lists; surrounding white
// space is ignored.
func Parse(kind, full string) (prefix, secret string, err error) {
	s := strings.TrimSpace(full)
	if rest, ok := strings.CutPrefix(s, "hskey-"+kind+"-"); ok {
		if len(rest) != prefixLen+1+secretLen || rest[prefixLen] != '-' {
			return "", "", fmt.Errorf("%w: want hskey-%s-<%d characters>-<%d characters>", ErrMalformed, kind, prefixLen, secretLen)
		}
		prefix, secret = rest[:prefixLen], rest[prefixLen+1:]
		if !base64URL(prefix) || !base64URL(secret) {
			return "", "", fmt.Errorf("%w: characters outside A-Za-z0-9_-", ErrMalformed)
		}
		return prefix, secret, nil
	}
	switch kind {
	case KindAuth:
		if len(s) == legacyAuthLen && lowerHex(s) {
			return s[:prefixLen], s[prefixLen:], nil
		}
	case KindAPI:
		if p, sec, ok := strings.Cut(s, "."); ok && len(p) == legacyAPIPrefixLen && len(sec) == legacyAPISecretLen &&
			base64URL(p) && base64URL(sec) {
			return p, sec, nil
		}
	}
	return "", "", fmt.Errorf("%w: want hskey-%s-<prefix>-<secret>", ErrMalformed, kind)
}

// LegacyAuth returns the prefix and hash to store for a pre-auth key of
// Headscale up to 0.27 (48 lowercase hex characters, kept in plaintext by
// Headscale): the first 12 characters and the SHA-256 of the other 36. The
// holder's key then parses and verifies like any other, and the plaintext
// need not be kept.
func LegacyAuth(plain string) (prefix string, hash []byte, err error) {
	if len(plain) != legacyAuthLen || !lowerHex(plain) {
		return "", nil, fmt.Errorf("%w: a Headscale pre-auth key up to 0.27 is %d lowercase hex characters", ErrMalformed, legacyAuthLen)
	}
	return plain[:prefixLen], Hash(plain[prefixLen:]), nil
}

// Hash returns the stored form of a secret: its SHA-256.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// IsBcrypt reports whether a stored hash is a bcrypt hash copied from
// Headscale rather than our SHA-256.
func IsBcrypt(hash []byte) bool {
	return len(hash) != sha256.Size && bytes.HasPrefix(hash, []byte("$2"))
}

// Verify reports whether secret matches the stored hash: a SHA-256 is
// compared in constant time, a bcrypt hash (from Headscale) with bcrypt.
// Any other stored value matches nothing.
func Verify(hash []byte, secret string) bool {
	switch {
	case len(hash) == sha256.Size:
		return subtle.ConstantTimeCompare(hash, Hash(secret)) == 1
	case IsBcrypt(hash):
		return bcrypt.CompareHashAndPassword(hash, []byte(secret)) == nil
	}
	return false
}

// NeedsRehash reports whether a stored hash that Verify accepted should be
// replaced by Hash(secret): it is a bcrypt hash, slow on every check.
func NeedsRehash(hash []byte) bool {
	return IsBcrypt(hash)
}

// Redacted returns the form of a key that is safe to list and log:
// "hskey-<kind>-<prefix>-***", or for a legacy Headscale API key (7-character
// prefix) "<prefix>***", as Headscale 0.29 lists it.
func Redacted(kind, prefix string) string {
	if kind == KindAPI && LegacyAPIPrefix(prefix) {
		return prefix + "***"
	}
	return "hskey-" + kind + "-" + prefix + "-***"
}

// LegacyAPIPrefix reports whether an API key's stored prefix is that of a
// key Headscale up to 0.27 made ("<7 characters>.<secret>").
func LegacyAPIPrefix(prefix string) bool {
	return len(prefix) == legacyAPIPrefixLen
}

// RedactedLegacyAuth returns the listed form of an imported Headscale ≤0.27
// pre-auth key: its first 12 characters and "***". Headscale listed such a
// key in full; the server does not keep the plaintext (see LegacyAuth), so
// only the part the holder's key starts with can be shown.
func RedactedLegacyAuth(prefix string) string {
	return prefix + "***"
}

// ListedPrefix turns the text an operator or UI gives to name a key (the
// whole key, its listed form, or the bare prefix) into the stored prefix.
func ListedPrefix(kind, s string) string {
	s = strings.TrimSpace(s)
	if p, _, err := Parse(kind, s); err == nil {
		return p
	}
	s = strings.TrimPrefix(s, "hskey-"+kind+"-")
	if p, ok := strings.CutSuffix(s, "***"); ok {
		s = p
		// "<12>-***": the "-" separates; a 7-character legacy API
		// prefix may itself end in "-".
		if len(s) == prefixLen+1 && s[prefixLen] == '-' {
			s = s[:prefixLen]
		}
	}
	return s
}

func base64URL(s string) bool {
	for i := range len(s) {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func lowerHex(s string) bool {
	for i := range len(s) {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("reading randomness: %w", err)
	}
	return hex.EncodeToString(b), nil
}
