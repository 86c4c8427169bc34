package grpcapi

import (
	"strconv"
	"time"

	"github.com/hsctl/headscale/pkg/api"
	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Conversions from the REST API's JSON shapes (camelCase, IDs as decimal
// text, RFC 3339 times) to the headscale.v1 messages, and of request times
// the other way.

// apiKeyJSON is an API key as the REST API lists it.
type apiKeyJSON struct {
	ID         string `json:"id"`
	Prefix     string `json:"prefix"`
	Expiration string `json:"expiration"`
	CreatedAt  string `json:"createdAt"`
	LastSeen   string `json:"lastSeen"`
}

// id is an API ID (decimal text; anything else is 0).
func id(s string) uint64 {
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

// timestamp is an API time ("" or unparsable: none).
func timestamp(s string) *timestamppb.Timestamp {
	if s == "" {
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return nil
	}
	return timestamppb.New(t)
}

func optTimestamp(s *string) *timestamppb.Timestamp {
	if s == nil {
		return nil
	}
	return timestamp(*s)
}

// apiTime is a request time as the API reads it; nil or the zero
// Timestamp is "" (the API's default).
func apiTime(t *timestamppb.Timestamp) string {
	if t == nil || (t.GetSeconds() == 0 && t.GetNanos() == 0) {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339Nano)
}

func userOut(u *api.User) *v1.User {
	if u == nil {
		return nil
	}
	return &v1.User{
		Id: id(u.ID), Name: u.Name, CreatedAt: timestamp(u.CreatedAt), DisplayName: u.DisplayName,
		Email: u.Email, ProviderId: u.ProviderID, Provider: u.Provider, ProfilePicUrl: u.ProfilePicURL,
		ProviderGroups: nilIfEmpty(u.ProviderGroups),
	}
}

func keyOut(k *api.PreAuthKey) *v1.PreAuthKey {
	if k == nil {
		return nil
	}
	return &v1.PreAuthKey{
		User: userOut(k.User), Id: id(k.ID), Key: k.Key, Reusable: k.Reusable, Ephemeral: k.Ephemeral,
		Used: k.Used, Expiration: timestamp(k.Expiration), CreatedAt: timestamp(k.CreatedAt), AclTags: nilIfEmpty(k.ACLTags),
	}
}

// nodeOut converts a node. The REST node names only its pre-auth key's ID
// and ephemeral flag; keys, when given (by ID), supplies the whole key as
// the key list shows it.
func nodeOut(n *api.Node, keys map[uint64]*v1.PreAuthKey) *v1.Node {
	tags := nilIfEmpty(n.Tags)
	out := &v1.Node{
		Id: id(n.ID), MachineKey: n.MachineKey, NodeKey: n.NodeKey, DiscoKey: n.DiscoKey,
		IpAddresses: nilIfEmpty(n.IPAddresses), Name: n.Name, User: userOut(n.User),
		LastSeen: optTimestamp(n.LastSeen), Expiry: optTimestamp(n.Expiry), CreatedAt: timestamp(n.CreatedAt),
		RegisterMethod: v1.RegisterMethod(v1.RegisterMethod_value[n.RegisterMethod]),
		// 0.23 to 0.27 read a node's tags from these (the tags are all
		// valid: this server refuses tags a node may not have).
		ForcedTags: tags, ValidTags: tags,
		GivenName: n.GivenName, Online: n.Online,
		ApprovedRoutes: nilIfEmpty(n.ApprovedRoutes), AvailableRoutes: nilIfEmpty(n.AvailableRoutes),
		SubnetRoutes: nilIfEmpty(n.SubnetRoutes), Tags: tags,
		PendingApproval: !n.Approved,
	}
	if n.PreAuthKey != nil {
		kid := id(n.PreAuthKey.ID)
		if k := keys[kid]; k != nil {
			out.PreAuthKey = k
		} else {
			out.PreAuthKey = &v1.PreAuthKey{Id: kid, Ephemeral: n.PreAuthKey.Ephemeral}
		}
	}
	return out
}

func routeOut(r *api.Route, keys map[uint64]*v1.PreAuthKey) *v1.Route {
	return &v1.Route{
		Id: id(r.ID), Node: nodeOut(&r.Node, keys), Prefix: r.Prefix, Advertised: r.Advertised,
		Enabled: r.Enabled, IsPrimary: r.IsPrimary, CreatedAt: timestamp(r.CreatedAt),
		UpdatedAt: timestamp(r.UpdatedAt), DeletedAt: optTimestamp(r.DeletedAt),
	}
}

func apiKeyOut(k *apiKeyJSON) *v1.ApiKey {
	return &v1.ApiKey{
		Id: id(k.ID), Prefix: k.Prefix, Expiration: timestamp(k.Expiration),
		CreatedAt: timestamp(k.CreatedAt), LastSeen: timestamp(k.LastSeen),
	}
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}
