package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireToolsEnv, set to "require" (as .ci/run does), makes Tool fail a
// test whose program is missing instead of skipping it.
const RequireToolsEnv = "HEADSCALE_TEST_TOOLS"

// Tool returns the path of a program from the system's packages (nginx,
// haproxy, caddy, knotd, named...) that a test runs for real, looking in
// PATH and then in the sbin directories (not always in a user's PATH).
// When it is missing the test is skipped, or fails when RequireToolsEnv is
// "require", naming the Debian package that has it.
func Tool(tb testing.TB, name, debianPackage string) string {
	tb.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if os.Getenv(RequireToolsEnv) == "require" {
		tb.Fatalf("%s not found (Debian package %s); %s=require says the test must run", name, debianPackage, RequireToolsEnv)
	}
	tb.Skipf("%s not found: install the Debian package %s to run this test", name, debianPackage)
	return ""
}
