package pebbletest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/acme"
)

func TestDNS(t *testing.T) {
	d, err := StartDNS("hs.test", "Other.Test.")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, network := range []string{"udp", "tcp"} {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, network, d.Addr())
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tests := []struct {
			name   string
			want   []string
			notFnd bool
		}{
			{name: "hs.test", want: []string{"127.0.0.1"}},
			{name: "other.test", want: []string{"127.0.0.1"}},
			{name: "nope.test", notFnd: true},
		}
		for _, tc := range tests {
			got, err := r.LookupHost(ctx, tc.name)
			var dnsErr *net.DNSError
			switch {
			case tc.notFnd:
				if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
					t.Errorf("%s %s: got %v, %v; want not found", network, tc.name, got, err)
				}
			case err != nil || !slices.Equal(got, tc.want):
				t.Errorf("%s %s: got %v, %v; want %v", network, tc.name, got, err, tc.want)
			}
		}
	}
}

// TestHTTP01 gets a certificate from Pebble with x/crypto/acme by hand,
// answering the HTTP-01 challenge that Pebble really fetches, and checks
// that it verifies under the root Pebble reports.
func TestHTTP01(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs pebble")
	}
	var mu sync.Mutex
	tokens := map[string]string{}
	fetched := 0 // challenge responses Pebble fetched
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		body, ok := tokens[r.URL.Path]
		if ok {
			fetched++
		}
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(body))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	const name = "hs.test"
	p := Start(t, Options{Names: []string{name}, HTTPPort: ln.Addr().(*net.TCPAddr).Port})

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	client := &acme.Client{Key: key, DirectoryURL: p.DirectoryURL(), HTTPClient: p.HTTPClient()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := client.Register(ctx, &acme.Account{}, acme.AcceptTOS); err != nil {
		t.Fatalf("register: %v", err)
	}
	order, err := client.AuthorizeOrder(ctx, acme.DomainIDs(name))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range order.AuthzURLs {
		z, err := client.GetAuthorization(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		var chal *acme.Challenge
		for _, c := range z.Challenges {
			if c.Type == "http-01" {
				chal = c
			}
		}
		if chal == nil {
			t.Fatalf("no http-01 challenge in %+v", z.Challenges)
		}
		body, err := client.HTTP01ChallengeResponse(chal.Token)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		tokens[client.HTTP01ChallengePath(chal.Token)] = body
		mu.Unlock()
		if _, err := client.Accept(ctx, chal); err != nil {
			t.Fatal(err)
		}
		if _, err := client.WaitAuthorization(ctx, z.URI); err != nil {
			t.Fatalf("authorization: %v", err)
		}
	}
	if order, err = client.WaitOrder(ctx, order.URI); err != nil {
		t.Fatal(err)
	}
	certKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{name}}, certKey)
	if err != nil {
		t.Fatal(err)
	}
	ders, _, err := client.CreateCertFromOrder(ctx, order, csr, true)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(ders[0])
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	for _, d := range ders[1:] {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: p.Roots(t), Intermediates: inter}); err != nil {
		t.Fatalf("issued certificate does not verify under Pebble's root: %v", err)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < 89*24*time.Hour || got > 91*24*time.Hour {
		t.Errorf("validity %v, want about 90 days", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if fetched == 0 {
		t.Error("Pebble never fetched the challenge response: validation did not happen")
	}
}
