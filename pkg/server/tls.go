package server

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"time"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/tlscert"
)

// The server terminates TLS itself when tls_cert_path or
// tls_letsencrypt_hostname is set: listen_addr and grpc_listen_addr take
// certificates from one tlscert.Source (certs), so a renewed certificate
// reaches new connections while open ones (map sessions, DERP) stay. File
// pairs are loaded in New (a pair that does not load refuses the start);
// the ACME client is made in Listen, after Options.Tweak could set
// ACMEHTTPClient, and contacts the CA only once Run starts it.

// setupFileCert loads the certificate files, if configured.
func (s *Server) setupFileCert() error {
	t := s.cfg.TLS
	if t.ACME() || t.CertPath == "" {
		return nil
	}
	src, err := tlscert.New(tlscert.Options{CertPath: t.CertPath, KeyPath: t.KeyPath, Logger: s.log.With("component", "tls")})
	if err != nil {
		return fmt.Errorf("tls_cert_path: %w", err)
	}
	s.certs = src
	s.metrics.AddTLS("files", s.certMetric)
	return nil
}

// setupACME makes the ACME client and binds tls_letsencrypt_listen for
// HTTP-01 challenges.
func (s *Server) setupACME() error {
	le := s.cfg.TLS.LetsEncrypt
	if !s.cfg.TLS.ACME() || s.certs != nil {
		return nil
	}
	src, err := tlscert.New(tlscert.Options{
		ACME: &tlscert.ACMEOptions{
			Hostname: le.Hostname, CacheDir: le.CacheDir, Challenge: le.ChallengeType,
			DirectoryURL: le.URL, Email: le.Email, HTTPClient: s.ACMEHTTPClient,
			RetryMin: s.ACMERetryMin, Check: s.ACMECheck,
		},
		Logger: s.log.With("component", "tls"),
	})
	if err != nil {
		return fmt.Errorf("tls_letsencrypt_hostname: %w", err)
	}
	s.certs = src
	s.metrics.AddTLS("acme", s.certMetric)
	if le.ChallengeType == config.ChallengeHTTP01 {
		if s.acmeLn, err = net.Listen("tcp", le.Listen); err != nil {
			return fmt.Errorf("listening on tls_letsencrypt_listen %s (HTTP-01 challenges): %w", le.Listen, err)
		}
	}
	return nil
}

// ACMEAddr is the HTTP-01 challenge listener's address (after Listen), nil
// without one.
func (s *Server) ACMEAddr() net.Addr {
	if s.acmeLn == nil {
		return nil
	}
	return s.acmeLn.Addr()
}

// acmeHandler answers HTTP-01 challenges and redirects everything else to
// https.
func (s *Server) acmeHandler() http.Handler { return s.certs.HTTPHandler() }

func (s *Server) certMetric() (time.Time, bool) {
	st := s.certs.Status()
	return st.NotAfter, st.Problem != ""
}

// certCheck is the certificate's entry in /health's checks, and whether
// it fails the server's health: no certificate, or an expired one, means
// clients cannot connect; a problem while a valid certificate is served
// (the ACME CA failing, a new file pair refused, expiry within a week)
// is a warning and the server stays "pass".
func (s *Server) certCheck(now time.Time) (check map[string]any, fail bool) {
	st := s.certs.Status()
	check = map[string]any{"componentType": "certificate", "source": st.Source, "status": "pass", "time": now.UTC().Format(time.RFC3339)}
	output := st.Problem
	switch {
	case !st.Serving():
		check["status"], fail = "fail", true
		output = "no certificate yet"
		if st.Problem != "" {
			output += ": " + st.Problem
		}
	case now.After(st.NotAfter):
		check["status"], fail = "fail", true
		output = fmt.Sprintf("certificate expired at %s", st.NotAfter.UTC().Format(time.RFC3339))
		if st.Problem != "" {
			output += "; " + st.Problem
		}
	case st.Problem != "":
		check["status"] = "warn"
	case st.NotAfter.Sub(now) < 7*24*time.Hour && st.NotAfter.Sub(st.NotBefore) > 14*24*time.Hour:
		check["status"] = "warn"
		output = fmt.Sprintf("certificate expires in %s and has not been renewed", st.NotAfter.Sub(now).Round(time.Hour))
	}
	if st.Serving() {
		check["names"] = st.Names
		check["notAfter"] = st.NotAfter.UTC().Format(time.RFC3339)
		check["observedValue"] = math.Round(st.NotAfter.Sub(now).Hours()/24*10) / 10
		check["observedUnit"] = "days"
	}
	if !st.NextRetry.IsZero() {
		check["nextRetry"] = st.NextRetry.UTC().Format(time.RFC3339)
	}
	if output != "" {
		check["output"] = output
	}
	return check, fail
}

// certStatus is the certificate's part of systemd's status line: empty
// while all is well.
func (s *Server) certStatus() string {
	if s.certs == nil {
		return ""
	}
	check, _ := s.certCheck(time.Now())
	if check["status"] == "pass" {
		return ""
	}
	out, _ := check["output"].(string)
	const max = 120
	if len(out) > max {
		out = out[:max] + "..."
	}
	return "TLS " + check["status"].(string) + ": " + out
}
