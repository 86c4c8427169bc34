package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// TestOIDCSecret: the client secret comes from the key or from its file
// (trailing newline dropped, $CREDENTIALS_DIRECTORY expanded), and is in
// no description of the configuration.
func TestOIDCSecret(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "oidc-secret", "from-file-s3cret\n")
	base := "oidc:\n  issuer: https://sso.example.com\n  client_id: hs\n"
	tests := []struct {
		name string
		yaml string
		env  []string
		want string
	}{
		{"inline", base + "  client_secret: inline-s3cret\n", nil, "inline-s3cret"},
		{"file", base + "  client_secret_path: " + filepath.Join(dir, "oidc-secret") + "\n", nil, "from-file-s3cret"},
		{"systemd credential", base + "  client_secret_path: ${CREDENTIALS_DIRECTORY}/oidc-secret\n", []string{"CREDENTIALS_DIRECTORY=" + dir}, "from-file-s3cret"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := mustLoadYAML(t, tc.yaml, tc.env...)
			got, err := cfg.OIDC.Secret()
			if err != nil || got != tc.want {
				t.Fatalf("Secret() = %q, %v; want %q", got, err, tc.want)
			}
			var logged bytes.Buffer
			slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "oidc", cfg.OIDC)
			js, _ := json.Marshal(cfg)
			for _, shown := range []string{cfg.OIDC.String(), fmt.Sprintf("%#v %v %+v", cfg.OIDC, cfg.OIDC, cfg.OIDC), logged.String(), string(js)} {
				if strings.Contains(shown, tc.want) {
					t.Errorf("the secret is shown: %s", shown)
				}
			}
		})
	}
	cfg, _ := mustLoadYAML(t, base+"  client_secret_path: "+filepath.Join(dir, "missing")+"\n")
	if _, err := cfg.OIDC.Secret(); err == nil || !strings.Contains(err.Error(), "client secret file") {
		t.Errorf("missing secret file: %v", err)
	}
}
