package derp

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/fuzzseed"
)

// FuzzLoadFile feeds derp.paths files to LoadFile: no panic, no unbounded
// allocation (YAML aliases), errors that name the file, and a map that
// loads is one the server can serve: regions keyed by their ID, each with
// at least one node and no null entries.
func FuzzLoadFile(f *testing.F) {
	seeds, err := fuzzseed.Literals(func(s string) bool { return strings.Contains(s, "regions") }, "*_test.go")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"Regions": {"901": {"RegionID": 901, "RegionCode": "j", "Nodes": [{"Name": "901a", "RegionID": 901, "HostName": "derp.example.com", "DERPPort": 443}]}}}`))
	f.Add([]byte("regions:\n  1:\n    regionid: 1\n    nodes: [null]\n"))
	f.Add([]byte("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nregions: *g\n"))
	path := filepath.Join(f.TempDir(), "derp.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			t.Skip("input over the size bound")
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		m, err := LoadFile(path)
		runtime.ReadMemStats(&ms)
		if got := ms.TotalAlloc - before; got > 64<<20 {
			t.Fatalf("LoadFile of %d bytes allocated %d MiB", len(data), got>>20)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), path+": ") {
				t.Errorf("error %q does not start with the file name", err)
			}
			return
		}
		if len(m.Regions) == 0 {
			t.Fatal("accepted a map without regions")
		}
		for id, r := range m.Regions {
			if r == nil || r.RegionID != id || len(r.Nodes) == 0 {
				t.Fatalf("accepted region %d: %+v", id, r)
			}
			for i, n := range r.Nodes {
				if n == nil {
					t.Fatalf("accepted region %d with node %d null", id, i)
				}
			}
		}
	})
}
