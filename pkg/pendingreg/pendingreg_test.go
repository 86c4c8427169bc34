package pendingreg

import (
	"context"
	"errors"
	"html/template"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newReg(m key.MachinePublic, host string, tags ...string) Registration {
	return Registration{Machine: m, NodeKey: key.NewNode().Public(), Hostinfo: &tailcfg.Hostinfo{Hostname: host, RequestTags: tags}, Cap: 130}
}

func TestIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := NewID()
		if len(id) != IDLength || !strings.HasPrefix(id, IDPrefix) || !ValidID(id) || seen[id] {
			t.Fatalf("bad or repeated auth ID %q", id)
		}
		seen[id] = true
	}
	if IDLength != 38 {
		t.Errorf("IDLength %d, Headscale's auth IDs have 38 characters", IDLength)
	}
	for _, bad := range []string{"", "abcdef", IDPrefix, IDPrefix + "0123456789abcdef0123456", IDPrefix + "0123456789abcdef012345678",
		IDPrefix + "0123456789abcdef0123456z", "hskey-auth-0123456789abcdef01234567", "../" + NewID()} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q) = true", bad)
		}
	}
}

func TestLifecycle(t *testing.T) {
	m := key.NewMachine().Public()
	for _, tc := range []struct {
		name   string
		decide func(g *Registry, id string) error
		want   Status
		node   ids.NodeID
		reason string
	}{
		{"completed", func(g *Registry, id string) error {
			_, err := g.Complete(id, func(r Registration) (ids.NodeID, error) { return 7, nil })
			return err
		}, Completed, 7, ""},
		{"rejected", func(g *Registry, id string) error {
			_, err := g.Reject(id, "not ours")
			return err
		}, Rejected, 0, "not ours"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := New(nil, 0)
			r, err := g.Begin(newReg(m, "laptop", "tag:b", "tag:a", "tag:b"))
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != Pending || r.Expires.Sub(r.Created) != DefaultTTL || strings.Join(r.Tags, ",") != "tag:a,tag:b" || r.Hostname() != "laptop" {
				t.Fatalf("begun: %+v", r)
			}
			got := make(chan Registration, 1)
			go func() {
				w, err := g.Wait(context.Background(), r.ID)
				if err != nil {
					t.Error(err)
				}
				got <- w
			}()
			if err := tc.decide(g, r.ID); err != nil {
				t.Fatal(err)
			}
			select {
			case w := <-got:
				if w.Status != tc.want || w.Node != tc.node || w.Reason != tc.reason {
					t.Errorf("waiter got %+v", w)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("waiter not woken")
			}
			// Single use: neither decision works again.
			if _, err := g.Complete(r.ID, func(Registration) (ids.NodeID, error) { return 8, nil }); !errors.Is(err, ErrDone) {
				t.Errorf("second Complete: %v", err)
			}
			if _, err := g.Reject(r.ID, ""); !errors.Is(err, ErrDone) {
				t.Errorf("second Reject: %v", err)
			}
			// A waiter arriving late still learns the outcome.
			if w, err := g.Wait(context.Background(), r.ID); err != nil || w.Status != tc.want {
				t.Errorf("late Wait: %+v %v", w, err)
			}
		})
	}
}

func TestCompleteFailureKeepsPending(t *testing.T) {
	g := New(nil, 0)
	r, _ := g.Begin(newReg(key.NewMachine().Public(), "x"))
	boom := errors.New("no such user")
	if _, err := g.Complete(r.ID, func(Registration) (ids.NodeID, error) { return 0, boom }); !errors.Is(err, boom) {
		t.Fatalf("Complete: %v", err)
	}
	if got, ok := g.Get(r.ID); !ok || got.Status != Pending {
		t.Fatalf("after a failed completion: %+v %v", got, ok)
	}
	// While one completion runs, another is refused.
	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := g.Complete(r.ID, func(Registration) (ids.NodeID, error) { close(entered); <-release; return 3, nil })
		done <- err
	}()
	<-entered
	if _, err := g.Complete(r.ID, func(Registration) (ids.NodeID, error) { return 4, nil }); !errors.Is(err, ErrBusy) {
		t.Errorf("concurrent Complete: %v", err)
	}
	if _, err := g.Reject(r.ID, ""); !errors.Is(err, ErrBusy) {
		t.Errorf("Reject during Complete: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, _ := g.Get(r.ID); got.Status != Completed || got.Node != 3 {
		t.Errorf("completed: %+v", got)
	}
}

func TestExpiry(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	g := New(c.now, 0)
	r, _ := g.Begin(newReg(key.NewMachine().Public(), "x"))
	c.add(DefaultTTL)
	if got, ok := g.Get(r.ID); !ok || got.Status != Expired {
		t.Fatalf("after the TTL: %+v %v", got, ok)
	}
	if _, err := g.Complete(r.ID, func(Registration) (ids.NodeID, error) { return 1, nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("Complete of an expired registration: %v", err)
	}
	c.add(doneGrace)
	if _, ok := g.Get(r.ID); ok {
		t.Error("expired registration still known after the grace period")
	}
	if _, err := g.Wait(context.Background(), r.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Wait on a forgotten registration: %v", err)
	}

	// A waiter is woken by the expiry itself (real clock, short TTL).
	g = New(nil, 50*time.Millisecond)
	r, _ = g.Begin(newReg(key.NewMachine().Public(), "x"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if w, err := g.Wait(ctx, r.ID); err != nil || w.Status != Expired {
		t.Errorf("Wait until expiry: %+v %v", w, err)
	}

	// A waiter's context ends its wait.
	g = New(nil, 0)
	r, _ = g.Begin(newReg(key.NewMachine().Public(), "x"))
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := g.Wait(ctx, r.ID); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a cancelled context: %v", err)
	}
}

func TestLimits(t *testing.T) {
	g := New(nil, 0)
	m := key.NewMachine().Public()
	var first Registration
	for i := range MaxPendingPerMachine + 1 {
		r, err := g.Begin(newReg(m, "x"))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r
		}
	}
	if r, _ := g.Get(first.ID); r.Status != Expired {
		t.Errorf("a machine's oldest registration is %v after %d more", r.Status, MaxPendingPerMachine)
	}
	if n := len(g.perMachine[m]); n != MaxPendingPerMachine {
		t.Errorf("%d pending for one machine", n)
	}
	for g.pendingLocked() < MaxPending {
		if _, err := g.Begin(newReg(key.NewMachine().Public(), "x")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := g.Begin(newReg(key.NewMachine().Public(), "x")); !errors.Is(err, ErrTooMany) {
		t.Errorf("Begin beyond MaxPending: %v", err)
	}
	// A machine that has pending registrations may still replace one.
	if _, err := g.Begin(newReg(m, "x")); err != nil {
		t.Errorf("Begin of a machine at its own limit: %v", err)
	}
}

func TestPage(t *testing.T) {
	g := New(nil, 0)
	r, _ := g.Begin(newReg(key.NewMachine().Public(), `<script>alert(1)</script>`, "tag:web"))
	done, _ := g.Begin(newReg(key.NewMachine().Public(), "done"))
	g.Complete(done.ID, func(Registration) (ids.NodeID, error) { return 1, nil })
	rejected, _ := g.Begin(newReg(key.NewMachine().Public(), "no"))
	g.Reject(rejected.ID, "")

	var hooked []string
	plain := http.NewServeMux()
	plain.Handle("GET /register/{id}", g.Page(PageOptions{}))
	oidc := http.NewServeMux()
	oidc.Handle("GET /register/{id}", g.Page(PageOptions{Login: func(w http.ResponseWriter, r *http.Request, reg Registration) {
		hooked = append(hooked, reg.ID)
		http.Redirect(w, r, "https://idp.example/authorize", http.StatusFound)
	}}))
	get := func(h http.Handler, path string) (int, string, http.Header) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		b, _ := io.ReadAll(rec.Body)
		return rec.Code, string(b), rec.Header()
	}
	for _, tc := range []struct {
		name, path string
		code       int
		want       []string
		not        []string
	}{
		{"pending", "/register/" + r.ID, 200, []string{
			"headscale nodes register --user USERNAME --key " + r.ID,
			"headscale auth register --auth-id " + r.ID + " --user USERNAME",
			"&lt;script&gt;", "tag:web", htmlText(t, r.Machine.ShortString()),
		}, []string{"<script>", "<a ", "src="}},
		{"unknown", "/register/" + NewID(), 404, []string{"unknown or has expired"}, nil},
		{"malformed", "/register/nope", 404, []string{"unknown or has expired"}, nil},
		{"completed", "/register/" + done.ID, 404, []string{"already completed"}, nil},
		{"rejected", "/register/" + rejected.ID, 404, []string{"rejected"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, h := get(plain, tc.path)
			if code != tc.code || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || h.Get("Cache-Control") != "no-store" {
				t.Fatalf("%s: %d %v", tc.path, code, h)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q:\n%s", w, body)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(body, w) {
					t.Errorf("page has %q:\n%s", w, body)
				}
			}
		})
	}
	// The login hook takes pending registrations only.
	if code, _, h := get(oidc, "/register/"+r.ID); code != http.StatusFound || h.Get("Location") != "https://idp.example/authorize" || len(hooked) != 1 || hooked[0] != r.ID {
		t.Errorf("login hook: %d %v %v", code, h, hooked)
	}
	if code, _, _ := get(oidc, "/register/"+done.ID); code != 404 || len(hooked) != 1 {
		t.Errorf("login hook on a completed registration: %d %v", code, hooked)
	}
}

// htmlText is s as html/template writes it in an element's text: a random
// key's "+" comes out as "&#43;".
func htmlText(t *testing.T, s string) string {
	t.Helper()
	var b strings.Builder
	if err := template.Must(template.New("").Parse("{{.}}")).Execute(&b, s); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
