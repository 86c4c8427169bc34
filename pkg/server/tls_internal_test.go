package server

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/testca"
	"github.com/hsctl/headscale/pkg/tlscert"
)

// TestCertCheckLevels: the tls:certificate check passes while the
// certificate has time left, warns in its last week (when it lasts longer
// than two weeks, so short-lived ones do not always warn) and fails once
// expired, which also fails /health.
func TestCertCheckLevels(t *testing.T) {
	ca, err := testca.New("levels")
	if err != nil {
		t.Fatal(err)
	}
	load := func(validFor time.Duration) (*Server, time.Time) {
		l, err := ca.Issue(validFor, "hs.test")
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if _, _, err := l.Write(dir); err != nil {
			t.Fatal(err)
		}
		src, err := tlscert.New(tlscert.Options{CertPath: filepath.Join(dir, "cert.pem"), KeyPath: filepath.Join(dir, "key.pem")})
		if err != nil {
			t.Fatal(err)
		}
		return &Server{certs: src}, l.NotAfter
	}
	long, longEnd := load(90 * 24 * time.Hour)
	short, shortEnd := load(2 * time.Hour)
	tests := []struct {
		name     string
		s        *Server
		now      time.Time
		want     string
		wantFail bool
		output   string
	}{
		{"long, far from expiry", long, longEnd.Add(-60 * 24 * time.Hour), "pass", false, ""},
		{"long, last week", long, longEnd.Add(-3 * 24 * time.Hour), "warn", false, "expires in 72h0m0s and has not been renewed"},
		{"long, expired", long, longEnd.Add(time.Minute), "fail", true, "certificate expired at"},
		{"short-lived, last hour", short, shortEnd.Add(-30 * time.Minute), "pass", false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check, fail := tc.s.certCheck(tc.now)
			out, _ := check["output"].(string)
			if check["status"] != tc.want || fail != tc.wantFail || !strings.Contains(out, tc.output) || (tc.output == "" && out != "") {
				t.Errorf("check %v, fail %v", check, fail)
			}
			if check["names"].([]string)[0] != "hs.test" || check["observedUnit"] != "days" {
				t.Errorf("check %v", check)
			}
		})
	}
}
