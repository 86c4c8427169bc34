package policy

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/fuzzseed"
	"github.com/tailscale/hujson"
)

// maxFuzzPolicy bounds the inputs: real policy files are tens of KiB.
const maxFuzzPolicy = 64 << 10

// maxFuzzAlloc bounds what parsing, compiling against testNodes and
// evaluating one input may allocate.
const maxFuzzAlloc = 64 << 20

// policySeeds are the policies of this package's tests (fragments that
// lean on tagOwners are completed with it) and, when POLICY_COMPAT_TESTDATA
// points at Tailscale's captures (see TestCompatCaptures), a sample of
// their policies, read at test time and never stored here.
func policySeeds(f *testing.F) []string {
	lits, err := fuzzseed.Literals(func(s string) bool {
		return strings.Contains(s, `"acls"`) || strings.Contains(s, `"grants"`) || strings.Contains(s, `"ssh"`) ||
			strings.Contains(s, `"tagOwners"`) || strings.Contains(s, `"nodeAttrs"`) || strings.Contains(s, `"autoApprovers"`)
	}, "*_test.go")
	if err != nil {
		f.Fatal(err)
	}
	var out []string
	for _, s := range lits {
		out = append(out, s)
		if t := strings.TrimSpace(s); !strings.HasPrefix(t, "{") {
			out = append(out, "{"+tagOwners+t+"}")
		}
	}
	if dir := os.Getenv("POLICY_COMPAT_TESTDATA"); dir != "" {
		files, _ := filepath.Glob(filepath.Join(dir, "*", "*.hujson"))
		for i := 0; i < len(files); i += max(1, len(files)/60) {
			raw, err := os.ReadFile(files[i])
			if err != nil {
				f.Fatal(err)
			}
			var c struct {
				Input struct {
					FullPolicy json.RawMessage `json:"full_policy"`
				} `json:"input"`
			}
			if std, err := hujson.Standardize(raw); err == nil && json.Unmarshal(std, &c) == nil && len(c.Input.FullPolicy) > 0 {
				out = append(out, string(c.Input.FullPolicy))
			}
		}
	}
	return out
}

// FuzzParse checks every policy entry point on arbitrary input: Parse
// (its errors must carry line:column, as documented), Compile against
// testNodes, every per-node query, the policy's tests and sshTests,
// autoApprovers and tagOwners checks, and Update after a node change
// (which must give the same answers as a full compile). No input may panic
// or allocate more than maxFuzzAlloc.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`), uint8(0))
	f.Add([]byte("{"+tagOwners+`"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22", "autogroup:self:*"]}],
		"grants": [{"src": ["bob@"], "dst": ["tag:server"], "ip": ["tcp:443"], "app": {"tailscale.com/cap/drive": [{}]}}],
		"ssh": [{"action": "check", "src": ["group:admins"], "dst": ["tag:server"], "users": ["root"]}],
		"tests": [{"src": "alice@", "accept": ["tag:server:22"]}],
		"sshTests": [{"src": "alice@", "dst": ["tag:server"], "accept": ["root"]}]}`), uint8(1))
	f.Add([]byte(`{"hosts": {"a": "10.0.0.0/8"}, "grants": [{"src": ["a"], "dst": ["10.1.0.0/16"], "ip": ["*"], "via": ["tag:x"]}]}`), uint8(2))
	f.Add([]byte("// c\n{\"groups\": {\"group:a\": [\"x@\",],},}"), uint8(3))
	f.Add([]byte("{"+tagOwners+`"autoApprovers": {"routes": {"10.0.0.0/8": ["group:eng", "tag:router"]}, "exitNode": ["alice@"]},
		"nodeAttrs": [{"target": ["*"], "attr": ["mullvad"]}],
		"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:internet:*", "10.33.0.0/16:0-65535"]}]}`), uint8(4))
	for i, s := range policySeeds(f) {
		f.Add([]byte(s), uint8(i))
	}
	prefixes := []netip.Prefix{netip.MustParsePrefix("10.33.0.0/16"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("fd00::/8")}
	f.Fuzz(func(t *testing.T, src []byte, change uint8) {
		if len(src) > maxFuzzPolicy {
			t.Skip("input over the size bound")
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		defer func() {
			runtime.ReadMemStats(&ms)
			if got := ms.TotalAlloc - before; got > maxFuzzAlloc {
				t.Fatalf("a %d-byte policy allocated %d MiB", len(src), got>>20)
			}
		}()

		pol, err := Parse(src)
		if err != nil {
			checkPositioned(t, err)
			return
		}
		if pol == nil {
			if strings.TrimSpace(string(src)) != "" {
				t.Fatal("a non-empty file parsed as no policy")
			}
			return
		}
		users, nodes := testUsers, testNodes()
		c, _, err := CompileWithOptions(pol, users, nodes, updateOpts)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("Compile failed without a reason")
			}
			return
		}
		for _, n := range nodes {
			for _, p := range prefixes {
				pol.AutoApproveRoute(p, n, users)
			}
			pol.AutoApproveExitNode(n, users)
			for _, tag := range n.Tags {
				pol.TagDefined(tag)
				for _, u := range users {
					pol.TagOwnerAllowed(tag, u, []string{"tag:server"})
				}
			}
		}
		full := fullView(c, nodeIDs(nodes))
		for _, a := range nodes {
			for _, b := range nodes {
				c.SSHCheckPeriod(a.ID, b.ID)
			}
		}
		if again := fullView(c, nodeIDs(nodes)); again != full {
			t.Fatalf("answers changed on a second look:\n%s", lineDiff(full, again))
		}

		// One to three node changes chosen by change: Update must agree
		// with a full compile of the new nodes.
		next, changed := mutate(rand.New(rand.NewPCG(uint64(change), 1)), nodes)
		upd, _, _, uerr := c.Update(users, next, changed)
		want, _, werr := CompileWithOptions(pol, users, next, updateOpts)
		if (uerr == nil) != (werr == nil) {
			t.Fatalf("after changing %v: Update err %v, Compile err %v", changed, uerr, werr)
		}
		if uerr != nil {
			return
		}
		ids := nodeIDs(next)
		if w, g := fullView(want, ids), fullView(upd, ids); w != g {
			t.Fatalf("after changing %v, Update differs from Compile:\n%s", changed, lineDiff(w, g))
		}
	})
}

// checkPositioned fails t unless err is Parse's documented form: an *Error
// or an ErrorList, every entry with a line and column and a reason.
func checkPositioned(t *testing.T, err error) {
	t.Helper()
	list, ok := positioned(err)
	if !ok {
		t.Fatalf("Parse error %T %q is neither *Error nor ErrorList", err, err)
	}
	if len(list) == 0 {
		t.Fatal("Parse returned an empty ErrorList")
	}
	for _, e := range list {
		if e.Line <= 0 || e.Column <= 0 || e.Msg == "" {
			t.Errorf("Parse error %q has no line:column or no reason", e)
		}
	}
}
