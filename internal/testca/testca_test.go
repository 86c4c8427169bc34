package testca

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"
)

// TestIssue: an issued certificate verifies against the CA's pool for the
// names it was issued for, and only for those.
func TestIssue(t *testing.T) {
	ca, err := New("testca test")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(time.Hour, "a.example.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.TLS(); err != nil {
		t.Fatalf("pair does not load: %v", err)
	}
	block, _ := pem.Decode(leaf.CertPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a.example.test", true},
		{"127.0.0.1", true},
		{"b.example.test", false},
	} {
		_, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: tc.name})
		if (err == nil) != tc.ok {
			t.Errorf("verify for %s: err=%v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	other, _ := New("other")
	if _, err := cert.Verify(x509.VerifyOptions{Roots: other.Pool(), DNSName: "a.example.test"}); err == nil {
		t.Error("verified against another CA's root")
	}
	if _, err := ca.Issue(0); err == nil {
		t.Error("issued a certificate without names")
	}
}
