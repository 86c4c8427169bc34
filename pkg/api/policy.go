package api

import (
	"context"
	"net/http"
	"time"
)

// PolicyService reads, checks and changes the policy; the server
// implements it (file or database mode).
type PolicyService interface {
	// GetPolicy returns the policy text in force ("" for none).
	GetPolicy(ctx context.Context) (text string, updatedAt time.Time, err error)
	// CheckPolicy validates text against the live tailnet without
	// changing anything; a client mistake is an *Error with status 400.
	CheckPolicy(ctx context.Context, text string) error
	// SetPolicy stores and applies text (database mode only).
	SetPolicy(ctx context.Context, text string) (time.Time, error)
}

func (a *API) policyService() (PolicyService, error) {
	if a.opts.Policy == nil {
		return nil, &Error{Status: http.StatusNotFound, Msg: "this server has no policy service"}
	}
	return a.opts.Policy, nil
}

func (a *API) getPolicy(r *http.Request) (any, error) {
	ps, err := a.policyService()
	if err != nil {
		return nil, err
	}
	text, at, err := ps.GetPolicy(r.Context())
	if err != nil {
		return nil, err
	}
	out := map[string]any{"policy": text}
	if !at.IsZero() {
		out["updatedAt"] = at.UTC().Format(time.RFC3339Nano)
	}
	return out, nil
}

func (a *API) setPolicy(r *http.Request) (any, error) {
	ps, err := a.policyService()
	if err != nil {
		return nil, err
	}
	text, err := policyBody(r)
	if err != nil {
		return nil, err
	}
	at, err := ps.SetPolicy(r.Context(), text)
	if err != nil {
		return nil, err
	}
	a.log.Info("policy changed through the API")
	return map[string]any{"policy": text, "updatedAt": at.UTC().Format(time.RFC3339Nano)}, nil
}

func (a *API) checkPolicy(r *http.Request) (any, error) {
	ps, err := a.policyService()
	if err != nil {
		return nil, err
	}
	text, err := policyBody(r)
	if err != nil {
		return nil, err
	}
	if err := ps.CheckPolicy(r.Context(), text); err != nil {
		return nil, err
	}
	return map[string]any{}, nil
}

// policyBody reads the {"policy": "..."} body of set and check.
func policyBody(r *http.Request) (string, error) {
	var req struct {
		Policy *string `json:"policy"`
	}
	if err := decodeBody(r, &req); err != nil {
		return "", err
	}
	if req.Policy == nil {
		return "", bad("policy is required")
	}
	return *req.Policy, nil
}
