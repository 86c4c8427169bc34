//go:build linux

package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/knottest"
	"github.com/hsctl/headscale/internal/pebbletest"
)

// TestTailscaleCert: `tailscale cert` end to end, every part real. Knot
// DNS is the tailnet domain's authoritative server and takes TSIG-signed
// dynamic updates from the server (dns.certificates); Pebble is the ACME
// server and validates DNS-01 challenges by asking Knot. An official
// client asks Pebble for a certificate for its MagicDNS name, asks the
// server (/machine/set-dns) for the challenge record, and gets a
// certificate that verifies for that name under Pebble's root. A name that
// is not the node's is refused by the client before any ACME order, and
// the server refuses another node's record (TestSetDNSWithKnot).
func TestTailscaleCert(t *testing.T) {
	env := requireEnv(t)
	knot := knottest.Start(t, "tailnet.test", knottest.Options{})
	pebble := pebbletest.Start(t, pebbletest.Options{DNSServer: knot.Addr})
	env.TrustRoot(t, pebble.ListenerCertPEM())
	env.TrustRoot(t, pebble.RootsPEM(t))

	srv := StartServer(t, ServerOptions{DNSExtra: fmt.Sprintf(`  certificates:
    provider: rfc2136
    rfc2136:
      server: %q
      tsig_key_name: %s
      tsig_algorithm: %s
      tsig_secret: %s
`, knot.Addr, knot.KeyName, knot.Algorithm, knot.Secret)})
	env.audit.add(t, "TSIG secret", knot.Secret)
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{})
	n := StartNode(t, srv, "web", NodeOptions{Env: []string{"TS_DEBUG_ACME_DIRECTORY_URL=" + pebble.DirectoryURL()}})
	n.MustUp(key.Key)

	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "web.crt"), filepath.Join(dir, "web.key")
	out, err := n.CLI(2*time.Minute, "cert", "--cert-file", certFile, "--key-file", keyFile, "web.tailnet.test")
	if err != nil {
		t.Fatalf("tailscale cert: %v\n%s\nPebble:\n%s", err, out, pebble.Output())
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s holds no certificate", certFile)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	for {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pebble.Roots(t), Intermediates: inter, DNSName: "web.tailnet.test"}); err != nil {
		t.Fatalf("the certificate does not verify for web.tailnet.test under Pebble's root: %v", err)
	}
	if _, err := os.Stat(keyFile); err != nil {
		t.Fatalf("no key file: %v", err)
	}
	// The challenge record is in the zone, set by the server (it is taken
	// back 10 minutes later, or when the server stops).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if txt, err := knot.TXT(ctx, "_acme-challenge.web.tailnet.test"); err != nil || len(txt) == 0 {
		t.Errorf("challenge record in Knot: %v, %v", txt, err)
	}
	if err := srv.logContains("certificate challenge record set"); err != nil {
		t.Error(err)
	}

	// Another name: the client finds it is not among its certificate
	// domains and asks nobody.
	out, err = n.CLI(time.Minute, "cert", "--cert-file", filepath.Join(dir, "x.crt"), "--key-file", filepath.Join(dir, "x.key"), "other.tailnet.test")
	if err == nil || !strings.Contains(out, "other.tailnet.test") {
		t.Errorf("tailscale cert for another node's name: err %v, output %q", err, out)
	}
	srv.Stop()
	if txt, _ := knot.TXT(ctx, "_acme-challenge.web.tailnet.test"); len(txt) != 0 {
		t.Errorf("challenge record still set after the server stopped: %v", txt)
	}
}
