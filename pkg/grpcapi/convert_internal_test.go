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
