package tstest

import (
	"os"
	"path/filepath"
	"testing"
)

// Shared returns the path of rel inside the project's shared material
// (../shared beside the repository, or a shared/ folder higher up, as a git
// worktree sees it), for example "fixtures/headscale-db". Fetched data may
// live only there; tests read it and never copy it into the repository.
// When it is not on this machine the test is skipped, saying where it
// looked.
func Shared(tb testing.TB, rel string) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	start := dir
	for {
		p := filepath.Join(dir, "shared", rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Skipf("shared/%s is not in %s or any folder above it: the shared material is not on this machine", rel, start)
		}
		dir = parent
	}
}
