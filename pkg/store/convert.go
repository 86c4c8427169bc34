package store

import (
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Conversions between Go values and their portable column encodings:
// ids as signed BIGINT, times as unix milliseconds (NULL for the zero time
// where the column is optional), string lists as JSON text, byte strings as
// hex text, and "" as NULL for optional unique text columns.

// scanner is what *sql.Row and *sql.Rows have in common.
type scanner interface {
	Scan(dest ...any) error
}

// dbID converts an id for binding; ids come from the database, so they
// always fit.
func dbID[T ~uint64](id T) int64 {
	if id > math.MaxInt64 {
		return -1 // matches no row
	}
	return int64(id)
}

// nullID binds an optional id.
func nullID[T ~uint64](id *T) any {
	if id == nil {
		return nil
	}
	return dbID(*id)
}

// idPtr converts a scanned optional id.
func idPtr[T ~uint64](v sql.NullInt64) *T {
	if !v.Valid {
		return nil
	}
	id := T(v.Int64)
	return &id
}

// millis encodes a required time.
func millis(t time.Time) int64 { return t.UnixMilli() }

// nullMillis encodes an optional time: the zero time is stored as NULL.
func nullMillis(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

// fromMillis decodes a required time (always UTC).
func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// fromNullMillis decodes an optional time; NULL becomes the zero time.
func fromNullMillis(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromMillis(v.Int64)
}

// nowMillis is the current time at the precision the store keeps.
func nowMillis() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

// orNow returns t, or the current time when t is zero.
func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return nowMillis()
	}
	return t
}

// encodeList encodes a string list as a JSON array; nil is stored as "[]".
func encodeList(l []string) (string, error) {
	if len(l) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(l)
	if err != nil {
		return "", fmt.Errorf("encode list: %w", err)
	}
	return string(b), nil
}

// decodeList decodes a JSON array; an empty array comes back as nil so that
// a nil list round-trips.
func decodeList(s string) ([]string, error) {
	if s == "" || s == "[]" || s == "null" {
		return nil, nil
	}
	var l []string
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return nil, fmt.Errorf("decode list %q: %w", s, err)
	}
	if len(l) == 0 {
		return nil, nil
	}
	return l, nil
}

// nullString binds "" as NULL (for unique-when-set and optional columns).
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// nullBytes binds raw JSON as text, nil/empty as NULL.
func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// encodeHash stores a hash as lowercase hex text.
func encodeHash(b []byte) string { return hex.EncodeToString(b) }

// decodeHash reverses encodeHash; an empty column gives nil.
func decodeHash(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("decode hash: %w", err)
	}
	return b, nil
}
