package cli

// Headscale's CLI output shapes. Headscale's CLI prints its generated
// protobuf structs with encoding/json (MarshalIndent with a tab for -o json,
// Marshal for json-line) and yaml.v3 for yaml: snake_case keys from the
// proto field names, zero values omitted, numeric IDs and enums,
// timestamps as {seconds, nanos}, empty lists as null. Every verb with -o
// output converts the REST API's answer (camelCase, string IDs, RFC 3339;
// the REST API keeps those shapes) into the small structs below and prints
// them with printHS, so scripts written for Headscale parse what they
// expect.
//
// The structs mirror Headscale 0.29's headscale.v1 messages: json tags carry
// the proto names, Go field names are the generated ones (so yaml.v3, which
// lowercases them, prints Headscale's YAML keys), and field order is the
// .proto declaration order. That is deliberate: when the gRPC API lands,
// these types are meant to be swapped for the generated ones without any
// change to what the CLI prints. Where 0.27 and 0.29 differ, the 0.29 shape
// is printed plus the 0.23–0.27 fields that do not conflict with it
// (Node.forced_tags and valid_tags, fields 18–20 in the older numbering,
// equal to the node's tags).

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/hsctl/headscale/pkg/api"
	"go.yaml.in/yaml/v3"
)

// hsTimestamp is google.protobuf.Timestamp.
type hsTimestamp struct {
	Seconds int64 `json:"seconds,omitempty"`
	Nanos   int32 `json:"nanos,omitempty"`
}

// hsUser is headscale.v1.User.
type hsUser struct {
	Id            uint64       `json:"id,omitempty"`
	Name          string       `json:"name,omitempty"`
	CreatedAt     *hsTimestamp `json:"created_at,omitempty"`
	DisplayName   string       `json:"display_name,omitempty"`
	Email         string       `json:"email,omitempty"`
	ProviderId    string       `json:"provider_id,omitempty"`
	Provider      string       `json:"provider,omitempty"`
	ProfilePicUrl string       `json:"profile_pic_url,omitempty"`
	// ProviderGroups is not in Headscale's User (field 100 of this
	// server's headscale.v1.User): the identity provider's groups.
	ProviderGroups []string `json:"provider_groups,omitempty"`
}

// hsPreAuthKey is headscale.v1.PreAuthKey.
type hsPreAuthKey struct {
	User       *hsUser      `json:"user,omitempty"`
	Id         uint64       `json:"id,omitempty"`
	Key        string       `json:"key,omitempty"`
	Reusable   bool         `json:"reusable,omitempty"`
	Ephemeral  bool         `json:"ephemeral,omitempty"`
	Used       bool         `json:"used,omitempty"`
	Expiration *hsTimestamp `json:"expiration,omitempty"`
	CreatedAt  *hsTimestamp `json:"created_at,omitempty"`
	AclTags    []string     `json:"acl_tags,omitempty"`
}

// hsNode is headscale.v1.Node as 0.29 numbers it, plus the tag fields
// 18–20 of 0.23–0.27 (forced_tags = valid_tags = the node's tags), so
// scripts written for either read what they expect.
type hsNode struct {
	Id              uint64        `json:"id,omitempty"`
	MachineKey      string        `json:"machine_key,omitempty"`
	NodeKey         string        `json:"node_key,omitempty"`
	DiscoKey        string        `json:"disco_key,omitempty"`
	IpAddresses     []string      `json:"ip_addresses,omitempty"`
	Name            string        `json:"name,omitempty"`
	User            *hsUser       `json:"user,omitempty"`
	LastSeen        *hsTimestamp  `json:"last_seen,omitempty"`
	Expiry          *hsTimestamp  `json:"expiry,omitempty"`
	PreAuthKey      *hsPreAuthKey `json:"pre_auth_key,omitempty"`
	CreatedAt       *hsTimestamp  `json:"created_at,omitempty"`
	RegisterMethod  int32         `json:"register_method,omitempty"`
	ForcedTags      []string      `json:"forced_tags,omitempty"`
	InvalidTags     []string      `json:"invalid_tags,omitempty"`
	ValidTags       []string      `json:"valid_tags,omitempty"`
	GivenName       string        `json:"given_name,omitempty"`
	Online          bool          `json:"online,omitempty"`
	ApprovedRoutes  []string      `json:"approved_routes,omitempty"`
	AvailableRoutes []string      `json:"available_routes,omitempty"`
	SubnetRoutes    []string      `json:"subnet_routes,omitempty"`
	Tags            []string      `json:"tags,omitempty"`
	// PendingApproval is not in Headscale's Node (field 100 of this
	// server's headscale.v1.Node): set while the node waits for device
	// approval.
	PendingApproval bool `json:"pending_approval,omitempty"`
}

// hsRoute is headscale.v1.Route of 0.23–0.25 (`routes list`).
type hsRoute struct {
	Id         uint64       `json:"id,omitempty"`
	Node       *hsNode      `json:"node,omitempty"`
	Prefix     string       `json:"prefix,omitempty"`
	Advertised bool         `json:"advertised,omitempty"`
	Enabled    bool         `json:"enabled,omitempty"`
	IsPrimary  bool         `json:"is_primary,omitempty"`
	CreatedAt  *hsTimestamp `json:"created_at,omitempty"`
	UpdatedAt  *hsTimestamp `json:"updated_at,omitempty"`
	DeletedAt  *hsTimestamp `json:"deleted_at,omitempty"`
}

// hsApiKey is headscale.v1.ApiKey.
type hsApiKey struct {
	Id         uint64       `json:"id,omitempty"`
	Prefix     string       `json:"prefix,omitempty"`
	Expiration *hsTimestamp `json:"expiration,omitempty"`
	CreatedAt  *hsTimestamp `json:"created_at,omitempty"`
	LastSeen   *hsTimestamp `json:"last_seen,omitempty"`
}

// hsHealth is headscale.v1.HealthResponse; Metrics is ours (health
// --metrics), absent unless asked for.
type hsHealth struct {
	DatabaseConnectivity bool  `json:"database_connectivity,omitempty"`
	Metrics              *bool `json:"metrics,omitempty"`
}

// hsEmpty is the empty response messages (DeleteUserResponse,
// ExpirePreAuthKeyResponse, ...), printed as {}.
type hsEmpty struct{}

// hsBackfill is headscale.v1.BackfillNodeIPsResponse.
type hsBackfill struct {
	Changes []string `json:"changes,omitempty"`
}

// hsRegisterMethods numbers headscale.v1.RegisterMethod.
var hsRegisterMethods = map[string]int32{
	"REGISTER_METHOD_AUTH_KEY": 1,
	"REGISTER_METHOD_CLI":      2,
	"REGISTER_METHOD_OIDC":     3,
}

// hsTime converts an API time (RFC 3339, "" or nil for none).
func hsTime(s string) *hsTimestamp {
	if s == "" {
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return nil
	}
	return &hsTimestamp{Seconds: t.Unix(), Nanos: int32(t.Nanosecond())}
}

// hsID converts an API ID (decimal text).
func hsID(s string) uint64 {
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

func hsUserFrom(u *api.User) *hsUser {
	if u == nil {
		return nil
	}
	return &hsUser{Id: hsID(u.ID), Name: u.Name, CreatedAt: hsTime(u.CreatedAt), DisplayName: u.DisplayName,
		Email: u.Email, ProviderId: u.ProviderID, Provider: u.Provider, ProfilePicUrl: u.ProfilePicURL,
		ProviderGroups: nilIfEmpty(u.ProviderGroups)}
}

// hsNodeFrom converts a node as the REST API returns it. The REST node
// names only the pre-auth key's ID and ephemeral flag, so that is all
// pre_auth_key holds here.
func hsNodeFrom(n api.Node) *hsNode {
	out := &hsNode{
		Id: hsID(n.ID), MachineKey: n.MachineKey, NodeKey: n.NodeKey, DiscoKey: n.DiscoKey,
		IpAddresses: n.IPAddresses, Name: n.Name, User: hsUserFrom(n.User),
		LastSeen: hsTime(deref(n.LastSeen)), Expiry: hsTime(deref(n.Expiry)), CreatedAt: hsTime(n.CreatedAt),
		RegisterMethod: hsRegisterMethods[n.RegisterMethod],
		ForcedTags:     nilIfEmpty(n.Tags), ValidTags: nilIfEmpty(n.Tags), GivenName: n.GivenName, Online: n.Online,
		ApprovedRoutes: nilIfEmpty(n.ApprovedRoutes), AvailableRoutes: nilIfEmpty(n.AvailableRoutes),
		SubnetRoutes: nilIfEmpty(n.SubnetRoutes), Tags: nilIfEmpty(n.Tags),
		PendingApproval: !n.Approved,
	}
	if n.PreAuthKey != nil {
		out.PreAuthKey = &hsPreAuthKey{Id: hsID(n.PreAuthKey.ID), Ephemeral: n.PreAuthKey.Ephemeral}
	}
	return out
}

func hsPreAuthKeyFrom(k *api.PreAuthKey) *hsPreAuthKey {
	if k == nil {
		return nil
	}
	return &hsPreAuthKey{User: hsUserFrom(k.User), Id: hsID(k.ID), Key: k.Key, Reusable: k.Reusable,
		Ephemeral: k.Ephemeral, Used: k.Used, Expiration: hsTime(k.Expiration), CreatedAt: hsTime(k.CreatedAt),
		AclTags: nilIfEmpty(k.ACLTags)}
}

// hsList converts a list with f, keeping an empty list nil as Headscale
// prints it (null).
func hsList[T, U any](in []T, f func(T) U) []U {
	var out []U
	for _, v := range in {
		out = append(out, f(v))
	}
	return out
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

// hsNodesFrom converts nodes as the REST API returns them, filling each
// node's pre_auth_key with the whole key as Headscale prints it (user,
// flags, times, tags; the key text as the key list shows it, redacted) from
// one listing of the pre-auth keys, since the REST node names only the
// key's ID. If that listing fails the nodes keep the ID alone.
func (a *app) hsNodesFrom(nodes []api.Node) []*hsNode {
	out := hsList(nodes, hsNodeFrom)
	need := false
	for _, n := range nodes {
		need = need || n.PreAuthKey != nil
	}
	if !need || a.output == "" { // the tables do not show it
		return out
	}
	var keys struct {
		Keys []api.PreAuthKey `json:"preAuthKeys"`
	}
	if err := a.call("GET", "/api/v1/preauthkey", nil, &keys); err != nil {
		return out
	}
	byID := map[uint64]*hsPreAuthKey{}
	for i := range keys.Keys {
		k := hsPreAuthKeyFrom(&keys.Keys[i])
		byID[k.Id] = k
	}
	for _, n := range out {
		if n.PreAuthKey != nil && byID[n.PreAuthKey.Id] != nil {
			n.PreAuthKey = byID[n.PreAuthKey.Id]
		}
	}
	return out
}

// hsNodeOf is hsNodesFrom for one node.
func (a *app) hsNodeOf(n api.Node) *hsNode { return a.hsNodesFrom([]api.Node{n})[0] }

// printHS writes v as Headscale's CLI does for -o json, json-line and
// yaml; without -o it writes human, Headscale's plain-text answer.
func (a *app) printHS(v any, human func(w io.Writer)) error {
	out := a.env.Stdout
	switch a.output {
	case "json":
		b, err := json.MarshalIndent(v, "", "\t")
		if err != nil {
			return fmt.Errorf("encoding JSON: %w", err)
		}
		fmt.Fprintln(out, string(b))
	case "json-line":
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encoding JSON: %w", err)
		}
		fmt.Fprintln(out, string(b))
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("encoding YAML: %w", err)
		}
		fmt.Fprintln(out, string(b))
	case "":
		human(out)
	default:
		return fmt.Errorf("unknown output format %q: use json, json-line or yaml", a.output)
	}
	return nil
}
