package clientaddr

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestAddr(t *testing.T) {
	trusted, err := ParseList([]string{"127.0.0.1", "10.0.0.0/8", "fd00::/64"})
	if err != nil {
		t.Fatal(err)
	}
	r := New(trusted)
	tests := []struct {
		name   string
		remote string
		xff    []string // X-Forwarded-For lines
		realIP []string
		want   string // "" for the invalid Addr
	}{
		{"direct, no headers", "192.0.2.7:5000", nil, nil, "192.0.2.7"},
		{"direct client forging X-Forwarded-For", "192.0.2.7:5000", []string{"198.51.100.1"}, nil, "192.0.2.7"},
		{"direct client forging X-Real-IP", "192.0.2.7:5000", nil, []string{"198.51.100.1"}, "192.0.2.7"},
		{"direct client forging both from a v6 address", "[2001:db8::9]:5000", []string{"127.0.0.1"}, []string{"10.1.1.1"}, "2001:db8::9"},
		{"trusted proxy, one hop", "127.0.0.1:4000", []string{"192.0.2.7"}, nil, "192.0.2.7"},
		{"trusted proxy, client prepended a forged hop", "127.0.0.1:4000", []string{"198.51.100.1, 192.0.2.7"}, nil, "192.0.2.7"},
		{"trusted proxy, forged hop claims to be a trusted proxy", "127.0.0.1:4000", []string{"10.0.0.3, 192.0.2.7"}, nil, "192.0.2.7"},
		{"two trusted proxies in a chain", "127.0.0.1:4000", []string{"192.0.2.7, 10.2.3.4"}, nil, "192.0.2.7"},
		{"chain split over header lines", "127.0.0.1:4000", []string{"198.51.100.1", "192.0.2.7, 10.2.3.4"}, nil, "192.0.2.7"},
		{"every hop trusted: the left-most", "127.0.0.1:4000", []string{"10.9.9.9, 10.2.3.4"}, nil, "10.9.9.9"},
		{"hop with a port", "127.0.0.1:4000", []string{"192.0.2.7:1234"}, nil, "192.0.2.7"},
		{"v6 hop in brackets with a port", "127.0.0.1:4000", []string{"[2001:db8::7]:1234"}, nil, "2001:db8::7"},
		{"v4-mapped hop", "127.0.0.1:4000", []string{"::ffff:192.0.2.7"}, nil, "192.0.2.7"},
		{"garbage right of the client: the last trusted hop", "127.0.0.1:4000", []string{"192.0.2.7, nonsense, 10.2.3.4"}, nil, "10.2.3.4"},
		{"garbage only: the proxy itself", "127.0.0.1:4000", []string{"unknown"}, nil, "127.0.0.1"},
		{"zone in a hop refused", "127.0.0.1:4000", []string{"fe80::1%eth0"}, nil, "127.0.0.1"},
		{"X-Real-IP from a trusted proxy", "127.0.0.1:4000", nil, []string{"192.0.2.8"}, "192.0.2.8"},
		{"X-Forwarded-For wins over X-Real-IP", "127.0.0.1:4000", []string{"192.0.2.7"}, []string{"192.0.2.8"}, "192.0.2.7"},
		{"bad X-Real-IP: the proxy", "127.0.0.1:4000", nil, []string{"not an address"}, "127.0.0.1"},
		{"trusted proxy, no headers", "127.0.0.1:4000", nil, nil, "127.0.0.1"},
		{"another loopback address is not trusted", "127.0.0.2:4000", []string{"192.0.2.7"}, nil, "127.0.0.2"},
		{"trusted v6 proxy", "[fd00::5]:4000", []string{"2001:db8::7"}, nil, "2001:db8::7"},
		{"v6 proxy outside the prefix", "[fd00:0:0:1::5]:4000", []string{"2001:db8::7"}, nil, "fd00:0:0:1::5"},
		{"v4-mapped peer matches a v4 prefix", "[::ffff:10.0.0.2]:4000", []string{"192.0.2.7"}, nil, "192.0.2.7"},
		{"unix socket", "@", []string{"192.0.2.7"}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &http.Request{RemoteAddr: tt.remote, Header: http.Header{}}
			for _, v := range tt.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			for _, v := range tt.realIP {
				req.Header.Add("X-Real-IP", v)
			}
			got := r.Addr(req)
			want := netip.Addr{}
			if tt.want != "" {
				want = netip.MustParseAddr(tt.want)
			}
			if got != want {
				t.Errorf("Addr = %v, want %v", got, want)
			}
		})
	}
}

func TestNoTrust(t *testing.T) {
	req := &http.Request{RemoteAddr: "127.0.0.1:4000", Header: http.Header{"X-Forwarded-For": {"192.0.2.7"}, "X-Real-Ip": {"192.0.2.8"}}}
	for name, r := range map[string]*Resolver{"nil": nil, "empty": New(nil)} {
		if got := r.Addr(req); got != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("%s resolver: Addr = %v, want the connection's 127.0.0.1", name, got)
		}
	}
	if got := (*Resolver)(nil).Text(&http.Request{RemoteAddr: "@"}); got != "unix" {
		t.Errorf("Text over a unix socket = %q, want unix", got)
	}
}

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"10.0.0.1", "10.0.0.1/32", false},
		{" 10.0.0.0/8 ", "10.0.0.0/8", false},
		{"10.1.2.3/8", "10.0.0.0/8", false},
		{"::1", "::1/128", false},
		{"fd00::/64", "fd00::/64", false},
		{"", "", true},
		{"proxy.example.com", "", true},
		{"10.0.0.0/33", "", true},
		{"fe80::1%eth0", "", true},
		{"10.0.0.1:80", "", true},
	}
	for _, tt := range tests {
		p, err := ParsePrefix(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParsePrefix(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && p.String() != tt.want {
			t.Errorf("ParsePrefix(%q) = %v, want %v", tt.in, p, tt.want)
		}
	}
	if _, err := ParseList([]string{"10.0.0.1", "nope"}); err == nil || err.Error()[:8] != "entry 2:" {
		t.Errorf("ParseList error = %v, want one naming entry 2", err)
	}
}
