package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
)

// CertDNS sets the DNS records of nodes' ACME DNS-01 challenges
// (`tailscale cert`, /machine/set-dns).
type CertDNS interface {
	// CertDomain is the name node may get a certificate for (its
	// MagicDNS name, no trailing dot).
	CertDomain(node *state.Node) string
	// SetTXT adds the TXT record name with value.
	SetTXT(ctx context.Context, name, value string) error
}

// maxTXTValue bounds a challenge record's value (an ACME DNS-01 value is
// 43 characters; one TXT string holds at most 255).
const maxTXTValue = 255

// serveSetDNS handles /machine/set-dns: a node asks for the TXT record of
// an ACME DNS-01 challenge for its own MagicDNS name. Only that record can
// be set, and only by the node itself.
func (c *noiseConn) serveSetDNS(w http.ResponseWriter, r *http.Request) {
	s := c.srv
	var req tailcfg.SetDNSRequest
	if err := decode(r, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	node, ok := s.opts.State.NodeByNodeKey(req.NodeKey)
	if !ok || node.MachineKey != c.machine {
		http.Error(w, "unknown node key: register first", http.StatusUnauthorized)
		return
	}
	log := s.log.With("node", node.ID, "name", node.GivenName)
	if s.opts.CertDNS == nil {
		http.Error(w, "this control server does not set DNS records for certificates (dns.certificates is not configured)", http.StatusNotImplemented)
		return
	}
	if node.Expired(time.Now()) {
		http.Error(w, "node key expired: log in again", http.StatusUnauthorized)
		return
	}
	if node.PendingApproval {
		http.Error(w, "node is waiting for an administrator's approval", http.StatusForbidden)
		return
	}
	domain := s.opts.CertDNS.CertDomain(node)
	want := "_acme-challenge." + domain
	name := strings.ToLower(strings.TrimSuffix(req.Name, "."))
	switch {
	case !strings.EqualFold(req.Type, "TXT"):
		http.Error(w, fmt.Sprintf("record type %q: only TXT records of ACME challenges are set", req.Type), http.StatusBadRequest)
		return
	case domain == "" || name != strings.ToLower(want):
		log.Warn("set-dns refused: not the node's own challenge record", "record", name)
		http.Error(w, fmt.Sprintf("record %q: this node may only set %q", req.Name, want), http.StatusForbidden)
		return
	case req.Value == "" || len(req.Value) > maxTXTValue || strings.ContainsAny(req.Value, "\"\\\n\r\x00"):
		http.Error(w, "record value must be 1 to 255 printable characters without quotes or backslashes", http.StatusBadRequest)
		return
	}
	if err := s.opts.CertDNS.SetTXT(r.Context(), name, req.Value); err != nil {
		if errors.Is(err, context.Canceled) {
			return
		}
		log.Warn("set-dns failed: the DNS server did not take the challenge record", "record", name, "err", err)
		http.Error(w, "the DNS server did not take the record: "+err.Error(), http.StatusBadGateway)
		return
	}
	log.Info("certificate challenge record set", "record", name)
	writeJSON(w, tailcfg.SetDNSResponse{})
}
