package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestGeneratedUpToDate regenerates pkg/headscalev1 from proto/ in memory
// and compares it with the committed files byte for byte.
func TestGeneratedUpToDate(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	files, err := Generate(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	if err := Compare(root, files); err != nil {
		t.Fatal(err)
	}
}

// TestCompareFindsDrift: Compare must notice a changed, a missing and a
// left-over file (it is what keeps the committed code honest).
func TestCompareFindsDrift(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, outDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string][]byte{outDir + "/a.pb.go": []byte("a"), outDir + "/b.pb.go": []byte("b")}
	write("a.pb.go", "a")
	write("b.pb.go", "b")
	if err := Compare(root, want); err != nil {
		t.Fatalf("identical files: %v", err)
	}
	for name, change := range map[string]func(){
		"changed":   func() { write("a.pb.go", "A") },
		"missing":   func() { os.Remove(filepath.Join(dir, "b.pb.go")) },
		"left over": func() { write("c.pb.go", "c") },
	} {
		write("a.pb.go", "a")
		write("b.pb.go", "b")
		os.Remove(filepath.Join(dir, "c.pb.go"))
		change()
		if err := Compare(root, want); err == nil {
			t.Errorf("%s file: Compare found nothing", name)
		}
	}
}
