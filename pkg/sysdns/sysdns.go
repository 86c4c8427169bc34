// Package sysdns gives the server's outbound requests (DERP map URLs, later
// OIDC discovery) the host's own DNS resolvers from /etc/resolv.conf, and
// never a tailnet resolver. The control server is what brings the tailnet
// up, so a host that also runs tailscaled with MagicDNS (resolv.conf
// pointing at 100.100.100.100) must not make the server depend on the
// network it serves: such entries are skipped, and when nothing else is
// left the resolvers tailscaled or systemd-resolved recorded as the host's
// originals are used.
package sysdns

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Tailnet resolvers: MagicDNS's IPv4 and IPv6 service addresses.
var tailnetResolvers = []netip.Addr{
	netip.MustParseAddr("100.100.100.100"),
	netip.MustParseAddr("fd7a:115c:a1e0::53"),
}

// IsTailnetResolver reports whether a is a MagicDNS service address.
func IsTailnetResolver(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, t := range tailnetResolvers {
		if a == t {
			return true
		}
	}
	return false
}

// Options configure a Resolver. The zero value reads the real files.
type Options struct {
	// ResolvConf is the host's resolver configuration; default
	// /etc/resolv.conf.
	ResolvConf string
	// Fallbacks are read in order when ResolvConf names only tailnet
	// resolvers: tailscaled's backup of the original file and
	// systemd-resolved's list of upstream servers.
	Fallbacks []string
	// Port is the DNS port; default 53 (tests use another).
	Port string
	// Logger receives a warning when tailnet resolvers are skipped.
	Logger *slog.Logger
}

// Resolver picks the host's nameservers and dials them for a net.Resolver.
type Resolver struct {
	opts Options
	next atomic.Uint32

	mu      sync.Mutex
	mtime   time.Time
	servers []string // host:port, re-read when ResolvConf changes
	warned  bool
}

// New returns a Resolver.
func New(opts Options) *Resolver {
	if opts.ResolvConf == "" {
		opts.ResolvConf = "/etc/resolv.conf"
	}
	if opts.Fallbacks == nil {
		opts.Fallbacks = []string{"/etc/resolv.pre-tailscale-backup.conf", "/run/systemd/resolve/resolv.conf"}
	}
	if opts.Port == "" {
		opts.Port = "53"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Resolver{opts: opts}
}

// Servers returns the nameservers lookups go to (host:port), reading
// ResolvConf again if it changed.
func (r *Resolver) Servers() ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fi, err := os.Stat(r.opts.ResolvConf)
	if err != nil {
		return nil, fmt.Errorf("reading host resolvers: %w", err)
	}
	if r.servers != nil && fi.ModTime().Equal(r.mtime) {
		return r.servers, nil
	}
	all, err := parse(r.opts.ResolvConf)
	if err != nil {
		return nil, err
	}
	if len(all) == 0 {
		// As the C library does: no nameserver line means the local host.
		all = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
	}
	usable, skipped := filter(all)
	source := r.opts.ResolvConf
	if len(usable) == 0 && len(skipped) > 0 {
		for _, fb := range r.opts.Fallbacks {
			if more, err := parse(fb); err == nil {
				if u, _ := filter(more); len(u) > 0 {
					usable, source = u, fb
					break
				}
			}
		}
	}
	if len(skipped) > 0 && !r.warned {
		r.warned = true
		r.opts.Logger.Warn("host resolver configuration names the tailnet's own DNS; the server skips it so it never depends on the tailnet it serves",
			"skipped", skipped, "using", usable, "from", source)
	}
	if len(usable) == 0 {
		return nil, fmt.Errorf("no usable nameserver in %s (tailnet resolvers are never used)", r.opts.ResolvConf)
	}
	r.servers = make([]string, len(usable))
	for i, a := range usable {
		r.servers[i] = net.JoinHostPort(a.String(), r.opts.Port)
	}
	r.mtime = fi.ModTime()
	return r.servers, nil
}

// dial replaces the server Go's resolver chose with the next usable host
// nameserver, rotating on each attempt so a dead one is skipped on retry.
func (r *Resolver) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	servers, err := r.Servers()
	if err != nil {
		return nil, err
	}
	addr := servers[int(r.next.Add(1)-1)%len(servers)]
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// NetResolver is a Go resolver that sends every query to the host's
// nameservers.
func (r *Resolver) NetResolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: r.dial}
}

// HTTPClient is the client for outbound requests: the standard transport
// (proxy settings from the environment) with look-ups through r.
func (r *Resolver) HTTPClient(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Resolver: r.NetResolver()}
	tr.DialContext = d.DialContext
	return &http.Client{Transport: tr, Timeout: timeout}
}

// parse returns the nameserver addresses of a resolv.conf file.
func parse(path string) ([]netip.Addr, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading host resolvers: %w", err)
	}
	defer f.Close()
	var out []netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(fields[1]); err == nil {
			out = append(out, a)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}

func filter(all []netip.Addr) (usable, skipped []netip.Addr) {
	for _, a := range all {
		if IsTailnetResolver(a) {
			skipped = append(skipped, a)
		} else {
			usable = append(usable, a)
		}
	}
	return usable, skipped
}
