// Package headscalev1 is the Go code generated from proto/headscale/v1:
// the messages and the gRPC client and server stubs of Headscale's admin
// API, headscale.v1.HeadscaleService. Nothing here is written by hand but
// this file; `make proto` regenerates the rest (internal/protogen), and
// pkg/grpcapi serves the service.
package headscalev1
