package api

import (
	"net/http"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
)

// The routes handlers of Headscale 0.23–0.25 (/api/v1/routes and
// /api/v1/node/{id}/routes), which older web UIs and scripts call. A
// route is one prefix of one node with a stable ID; enabling it approves
// the prefix (see state.Routes).

// Route is a route as Headscale 0.23–0.25's v1 API returned it.
type Route struct {
	ID         string `json:"id"`
	Node       Node   `json:"node"`
	Prefix     string `json:"prefix"`
	Advertised bool   `json:"advertised"`
	Enabled    bool   `json:"enabled"`
	IsPrimary  bool   `json:"isPrimary"`
	CreatedAt  string `json:"createdAt"`
	UpdatedAt  string `json:"updatedAt"`
	// DeletedAt is always null: deleted routes are not listed.
	DeletedAt *string `json:"deletedAt"`
}

func (a *API) routesOut(rs []state.Route) map[string]any {
	out := make([]Route, 0, len(rs))
	for _, r := range rs {
		out = append(out, Route{
			ID: r.ID.String(), Node: a.nodeOut(r.Node), Prefix: r.Prefix.String(),
			Advertised: r.Advertised, Enabled: r.Enabled, IsPrimary: r.Primary,
			CreatedAt: ts(r.CreatedAt), UpdatedAt: ts(r.CreatedAt),
		})
	}
	return map[string]any{"routes": out}
}

func (a *API) listRoutes(r *http.Request) (any, error) {
	rs, err := a.opts.State.Routes(r.Context(), 0)
	if err != nil {
		return nil, err
	}
	return a.routesOut(rs), nil
}

func (a *API) nodeRoutes(r *http.Request) (any, error) {
	n, err := a.node(r)
	if err != nil {
		return nil, err
	}
	rs, err := a.opts.State.Routes(r.Context(), n.ID)
	if err != nil {
		return nil, err
	}
	return a.routesOut(rs), nil
}

func (a *API) enableRoute(r *http.Request) (any, error) {
	id, err := pathID[ids.RouteID](r, "id")
	if err != nil {
		return nil, err
	}
	if _, err := a.opts.State.EnableRoute(r.Context(), id); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (a *API) disableRoute(r *http.Request) (any, error) {
	id, err := pathID[ids.RouteID](r, "id")
	if err != nil {
		return nil, err
	}
	if _, err := a.opts.State.DisableRoute(r.Context(), id); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (a *API) deleteRoute(r *http.Request) (any, error) {
	id, err := pathID[ids.RouteID](r, "id")
	if err != nil {
		return nil, err
	}
	if err := a.opts.State.DeleteRoute(r.Context(), id); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
