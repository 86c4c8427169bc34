package keyfile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

func TestLoose(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		mode  os.FileMode
		loose bool
	}{
		{0o600, false}, {0o400, false}, {0o700, false},
		{0o640, true}, {0o644, true}, {0o604, true}, {0o660, true}, {0o666, true}, {0o610, true}, {0o601, true},
	} {
		p := filepath.Join(dir, tc.mode.String())
		if err := os.WriteFile(p, []byte("privkey:00"), 0o600); err != nil {
			t.Fatal(err)
		}
		// Chmod: WriteFile's mode passes through the umask.
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		perm, loose, err := Loose(p)
		if err != nil || perm != tc.mode || loose != tc.loose {
			t.Errorf("Loose(%v file) = %v, %v, %v; want %v, %v, nil", tc.mode, perm, loose, err, tc.mode, tc.loose)
		}
	}
	if perm, loose, err := Loose(filepath.Join(dir, "missing")); perm != 0 || loose || err != nil {
		t.Errorf("Loose(missing) = %v, %v, %v; want 0, false, nil", perm, loose, err)
	}
	// A key created under a permissive umask is still private.
	old := syscall.Umask(0)
	p := filepath.Join(dir, "umask0", "noise.key")
	_, err := MachineKey(p)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if perm, loose, err := Loose(p); loose || err != nil || perm != PrivateMode {
		t.Errorf("key created under umask 0: %v, loose %v, %v", perm, loose, err)
	}
	if fi, err := os.Stat(filepath.Dir(p)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("key directory created under umask 0: %v %v, want 0700", fi.Mode(), err)
	}
}
