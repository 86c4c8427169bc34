// Package ids defines the identifier types of the records the server keeps:
// nodes, users, pre-auth keys, API keys and routes. Each is a distinct type over the
// database's integer id, so passing a user ID where a node ID is expected
// does not compile.
//
// The types carry no behaviour beyond their decimal text form. Conversions
// to other representations happen at the edges: the store binds them as
// signed integers, the mapper converts node and user IDs to tailcfg's types,
// and the API and CLI parse and print them with Parse and String. JSON
// encodes them as plain numbers, as before they were typed.
//
// The package imports only the standard library so that every package,
// down to the store, can use it.
package ids

import (
	"fmt"
	"strconv"
)

// NodeID identifies a registered node (machine). It is also the node's
// tailcfg.NodeID and, in decimal, its StableNodeID.
type NodeID uint64

// UserID identifies a user. Zero means "no user" (a tagged node).
type UserID uint64

// PreAuthKeyID identifies a pre-auth key. Zero means "none".
type PreAuthKeyID uint64

// APIKeyID identifies an API key.
type APIKeyID uint64

// RouteID identifies one route (a prefix of one node) for the routes
// verbs of Headscale 0.23–0.25, which name routes by ID.
type RouteID uint64

// String returns the ID in decimal.
func (id NodeID) String() string { return strconv.FormatUint(uint64(id), 10) }

// String returns the ID in decimal.
func (id UserID) String() string { return strconv.FormatUint(uint64(id), 10) }

// String returns the ID in decimal.
func (id PreAuthKeyID) String() string { return strconv.FormatUint(uint64(id), 10) }

// String returns the ID in decimal.
func (id APIKeyID) String() string { return strconv.FormatUint(uint64(id), 10) }

// String returns the ID in decimal.
func (id RouteID) String() string { return strconv.FormatUint(uint64(id), 10) }

// ID is any of the identifier types.
type ID interface {
	NodeID | UserID | PreAuthKeyID | APIKeyID | RouteID
}

// Parse parses a decimal ID of type T, as String prints it.
func Parse[T ID](s string) (T, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("parse %T %q: %w", zero, s, err)
	}
	return T(v), nil
}
