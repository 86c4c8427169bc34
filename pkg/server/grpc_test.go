package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"github.com/hsctl/headscale/pkg/store"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestGRPCServing: the gRPC API is off without TLS or
// grpc_allow_insecure (and start-up says why), served over h2c with a
// warning with grpc_allow_insecure, and takes the API keys Headscale
// handed out (a legacy "<prefix>.<secret>" key with its bcrypt hash, as
// the importer keeps it) exactly as the REST API does.
func TestGRPCServing(t *testing.T) {
	off := servertest.Start(t, engine(t, servertest.Options{}))
	if off.GRPCAddr() != nil || !strings.Contains(off.Logs(), "gRPC API off: no TLS certificate (tls_cert_path or tls_letsencrypt_hostname) and grpc_allow_insecure is false") {
		t.Errorf("without TLS: gRPC at %v, logs:\n%s", off.GRPCAddr(), off.Logs())
	}

	ts := servertest.Start(t, engine(t, servertest.Options{ExtraYAML: "grpc_allow_insecure: true\n"}))
	if !strings.Contains(ts.Logs(), "gRPC API served without TLS") {
		t.Errorf("no warning about plain-text gRPC in:\n%s", ts.Logs())
	}
	prefix, secret := "aB3-x_Q", "Zr8kQ2mN5pL7vX1cW9yT4hJ6fD0sA3gE"
	legacy := prefix + "." + secret
	ts.NoteSecret(legacy)
	ts.NoteSecret(secret)
	hash, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Store().CreateAPIKey(t.Context(), store.APIKey{Prefix: prefix, Hash: hash, Expiration: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(ts.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := v1.NewHeadscaleServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name, auth string
		want       codes.Code
	}{
		{"legacy key", "Bearer " + legacy, codes.OK},
		{"legacy key, wrong secret", "Bearer " + prefix + ".Zr8kQ2mN5pL7vX1cW9yT4hJ6fD0sA3gX", codes.Unauthenticated},
		{"legacy key again (rehashed)", "Bearer " + legacy, codes.OK},
		{"our key", "Bearer " + ts.CreateAPIKey(t, time.Time{}), codes.OK},
	} {
		_, err := c.Health(metadata.AppendToOutgoingContext(ctx, "authorization", tc.auth), &v1.HealthRequest{})
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
}
