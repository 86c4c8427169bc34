package grpcapi

import (
	"slices"
	"testing"

	"github.com/hsctl/headscale/pkg/api"
)

// TestUserOutProviderGroups: the identity provider's groups reach the gRPC
// User (field 100, beside Headscale's fields, which keep their values).
func TestUserOutProviderGroups(t *testing.T) {
	tests := []struct {
		name   string
		groups []string
		want   []string
	}{
		{"none", []string{}, nil},
		{"some", []string{"/vpn-admins", "eng"}, []string{"/vpn-admins", "eng"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := userOut(&api.User{ID: "7", Name: "alice", Email: "alice@example.com", Provider: "oidc", ProviderID: "https://idp/1", ProviderGroups: tt.groups})
			if !slices.Equal(u.GetProviderGroups(), tt.want) {
				t.Errorf("provider_groups %q, want %q", u.GetProviderGroups(), tt.want)
			}
			if u.GetId() != 7 || u.GetName() != "alice" || u.GetEmail() != "alice@example.com" || u.GetProvider() != "oidc" || u.GetProviderId() != "https://idp/1" {
				t.Errorf("Headscale's fields changed: %v", u)
			}
		})
	}
}

// TestNodeOutPendingApproval: a node waiting for device approval carries
// pending_approval (field 100); an approved one leaves it unset, as
// Headscale's Node has it.
func TestNodeOutPendingApproval(t *testing.T) {
	for _, approved := range []bool{true, false} {
		n := nodeOut(&api.Node{ID: "3", GivenName: "laptop", CreatedAt: "2026-01-02T03:04:05Z", RegisterMethod: "REGISTER_METHOD_AUTH_KEY", Approved: approved}, nil)
		if n.GetPendingApproval() == approved || n.GetId() != 3 || n.GetGivenName() != "laptop" {
			t.Errorf("approved %v: node %v", approved, n)
		}
	}
}
