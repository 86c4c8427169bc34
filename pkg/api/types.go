package api

import (
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
)

// The JSON shapes below follow Headscale's v1 API: camelCase names, IDs as
// strings, RFC 3339 times, so existing scripts and web UIs parse them.

// User is a user as the v1 API returns it.
type User struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	CreatedAt     string `json:"createdAt"`
	DisplayName   string `json:"displayName"`
	Email         string `json:"email"`
	ProviderID    string `json:"providerId"`
	Provider      string `json:"provider"`
	ProfilePicURL string `json:"profilePicUrl"`
	// ProviderGroups is not in Headscale's User: the groups the identity
	// provider put the user in at the last login (always an array).
	ProviderGroups []string `json:"providerGroups"`
}

// PreAuthKey is a pre-auth key as the v1 API returns it. Key is the full
// secret only in the response that created it.
type PreAuthKey struct {
	User       *User    `json:"user"`
	ID         string   `json:"id"`
	Key        string   `json:"key"`
	Reusable   bool     `json:"reusable"`
	Ephemeral  bool     `json:"ephemeral"`
	Used       bool     `json:"used"`
	Expiration string   `json:"expiration"`
	CreatedAt  string   `json:"createdAt"`
	ACLTags    []string `json:"aclTags"`
}

// Node is a node as the v1 API returns it.
type Node struct {
	ID              string   `json:"id"`
	MachineKey      string   `json:"machineKey"`
	NodeKey         string   `json:"nodeKey"`
	DiscoKey        string   `json:"discoKey"`
	IPAddresses     []string `json:"ipAddresses"`
	Name            string   `json:"name"`
	User            *User    `json:"user"`
	LastSeen        *string  `json:"lastSeen"` // null: never seen
	Expiry          *string  `json:"expiry"`   // null: never expires
	CreatedAt       string   `json:"createdAt"`
	RegisterMethod  string   `json:"registerMethod"`
	GivenName       string   `json:"givenName"`
	Online          bool     `json:"online"`
	ApprovedRoutes  []string `json:"approvedRoutes"`
	AvailableRoutes []string `json:"availableRoutes"`
	SubnetRoutes    []string `json:"subnetRoutes"`
	Tags            []string `json:"tags"`
	Ephemeral       bool     `json:"ephemeral"`
	// Approved is false while the node waits for device approval
	// (node.require_approval; this server's extension).
	Approved bool `json:"approved"`
	// PreAuthKey names the key the node registered with (null: none);
	// Headplane reads .ephemeral from it.
	PreAuthKey *NodeKeyRef `json:"preAuthKey"`
	// ForcedTags, ValidTags and InvalidTags are the pre-0.28 tag fields;
	// UIs built for those versions still read them.
	ForcedTags  []string `json:"forcedTags"`
	ValidTags   []string `json:"validTags"`
	InvalidTags []string `json:"invalidTags"`
}

// NodeKeyRef is the pre-auth key a node registered with, as far as the
// node record knows it.
type NodeKeyRef struct {
	ID        string `json:"id"`
	Ephemeral bool   `json:"ephemeral"`
}

// taggedDevices is the owner Headscale shows for tagged nodes, so UIs that
// read node.user.name do not meet null.
var taggedDevices = User{ID: "2147455555", Name: "tagged-devices", DisplayName: "Tagged Devices"}

func optTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

func ts(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func userJSON(u *state.User) *User {
	if u == nil {
		return nil
	}
	groups := u.Groups
	if groups == nil {
		groups = []string{}
	}
	return &User{ID: u.ID.String(), Name: u.Name, CreatedAt: ts(u.CreatedAt), DisplayName: u.DisplayName, Email: u.Email,
		ProviderID: u.ProviderID, Provider: u.Provider, ProfilePicURL: u.ProfilePicURL, ProviderGroups: groups}
}

func keyJSON(k store.PreAuthKey, u *state.User, full string) PreAuthKey {
	out := PreAuthKey{
		User: userJSON(u), ID: k.ID.String(), Key: full, Reusable: k.Reusable, Ephemeral: k.Ephemeral,
		Used: k.Used, Expiration: ts(k.Expiration), CreatedAt: ts(k.CreatedAt), ACLTags: nonNil(k.Tags),
	}
	if out.Key == "" {
		out.Key = redactedKey(k)
	}
	return out
}

// redactedKey is how a pre-auth key is listed: "hskey-auth-<prefix>-***", or
// for a key imported from Headscale's plain 48-hex form its first 12
// characters and "***" (Headscale listed those in full; the plaintext is not
// kept here).
func redactedKey(k store.PreAuthKey) string {
	if k.Legacy {
		return authkey.RedactedLegacyAuth(k.Prefix)
	}
	return authkey.Redacted(authkey.KindAuth, k.Prefix)
}

var registerMethods = map[string]string{
	"authkey": "REGISTER_METHOD_AUTH_KEY",
	"cli":     "REGISTER_METHOD_CLI",
	"oidc":    "REGISTER_METHOD_OIDC",
}

func nodeJSON(n *state.Node, u *state.User) Node {
	out := Node{
		ID: n.ID.String(), MachineKey: n.MachineKey.String(), NodeKey: n.NodeKey.String(),
		Name: n.Hostname, GivenName: n.GivenName, User: userJSON(u),
		LastSeen: optTime(n.LastSeen), Expiry: optTime(n.Expiry), CreatedAt: ts(n.CreatedAt),
		RegisterMethod: registerMethods[n.RegisterMethod], Online: n.Online,
		Tags: nonNil(n.Tags), Ephemeral: n.Ephemeral, Approved: !n.PendingApproval,
		ApprovedRoutes: []string{}, AvailableRoutes: []string{}, SubnetRoutes: []string{},
		IPAddresses: []string{},
		ForcedTags:  nonNil(n.Tags), ValidTags: []string{}, InvalidTags: []string{},
	}
	if n.Tagged() || out.User == nil {
		tagged := taggedDevices
		out.User = &tagged
	}
	if n.AuthKeyID != 0 {
		out.PreAuthKey = &NodeKeyRef{ID: n.AuthKeyID.String(), Ephemeral: n.Ephemeral}
	}
	if out.RegisterMethod == "" {
		out.RegisterMethod = "REGISTER_METHOD_UNSPECIFIED"
	}
	if !n.DiscoKey.IsZero() {
		out.DiscoKey = n.DiscoKey.String()
	}
	if n.IPv4.IsValid() {
		out.IPAddresses = append(out.IPAddresses, n.IPv4.String())
	}
	if n.IPv6.IsValid() {
		out.IPAddresses = append(out.IPAddresses, n.IPv6.String())
	}
	for _, r := range n.ApprovedRoutes {
		out.ApprovedRoutes = append(out.ApprovedRoutes, r.String())
	}
	// Routes the node announces; its subnet routes are those it serves
	// now, as in Headscale: the subnet routes it is the primary router for
	// and its approved exit routes.
	for _, r := range n.AnnouncedRoutes() {
		out.AvailableRoutes = append(out.AvailableRoutes, r.String())
	}
	for _, r := range n.PrimaryRoutes {
		out.SubnetRoutes = append(out.SubnetRoutes, r.String())
	}
	for _, r := range n.ExitRoutes() {
		out.SubnetRoutes = append(out.SubnetRoutes, r.String())
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
