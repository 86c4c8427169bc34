package api

import (
	_ "embed"
	"net/http"
)

// openAPIDoc is the OpenAPI 3.1 description of /api/v1, kept true to the
// routes by TestOpenAPIMatchesRoutes.
//
//go:embed openapi.yaml
var openAPIDoc []byte

// ServeOpenAPI serves the OpenAPI document (public, like Headscale's).
func (a *API) ServeOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(openAPIDoc)
}
