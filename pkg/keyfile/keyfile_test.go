package keyfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCreateThenLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "noise.key")
	a, err := MachineKey(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := MachineKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Equal(b) {
		t.Fatal("key changed across loads")
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	raw, _ := os.ReadFile(p)
	if !strings.HasPrefix(string(raw), "privkey:") {
		t.Fatalf("unexpected format %q", raw)
	}
	n1, err := NodeKey(filepath.Join(dir, "derp.key"))
	if err != nil {
		t.Fatal(err)
	}
	n2, _ := NodeKey(filepath.Join(dir, "derp.key"))
	if !n1.Equal(n2) {
		t.Fatal("node key changed")
	}
	os.WriteFile(filepath.Join(dir, "bad.key"), []byte("garbage"), 0o600)
	if _, err := MachineKey(filepath.Join(dir, "bad.key")); err == nil {
		t.Fatal("garbage key accepted")
	}
}
