package ids

import (
	"encoding/json"
	"fmt"
	"testing"
)

func TestTextForms(t *testing.T) {
	tests := []struct {
		name string
		v    any
		str  string
		json string
	}{
		{"node", NodeID(42), "42", "42"},
		{"user", UserID(7), "7", "7"},
		{"pre-auth key", PreAuthKeyID(1), "1", "1"},
		{"api key", APIKeyID(18446744073709551615), "18446744073709551615", "18446744073709551615"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmt.Sprint(tt.v); got != tt.str {
				t.Errorf("String = %q, want %q", got, tt.str)
			}
			if got := fmt.Sprintf("%d", tt.v); got != tt.str {
				t.Errorf("%%d = %q, want %q", got, tt.str)
			}
			// JSON stays a plain number, as the untyped uint64 was.
			b, err := json.Marshal(tt.v)
			if err != nil || string(b) != tt.json {
				t.Errorf("JSON = %s, %v; want %s", b, err, tt.json)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    NodeID
		wantErr bool
	}{
		{"1", 1, false},
		{"18446744073709551615", 18446744073709551615, false},
		{"", 0, true},
		{"-1", 0, true},
		{"x", 0, true},
		{"18446744073709551616", 0, true},
	}
	for _, tt := range tests {
		got, err := Parse[NodeID](tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("Parse(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if u, err := Parse[UserID](UserID(99).String()); err != nil || u != 99 {
		t.Errorf("round trip = %d, %v", u, err)
	}
}
