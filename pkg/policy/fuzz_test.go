package policy

import "testing"

// FuzzParse checks that no input makes Parse, Compile or RunTests panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`))
	f.Add([]byte("{" + tagOwners + `"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22", "autogroup:self:*"]}],
		"grants": [{"src": ["bob@"], "dst": ["tag:server"], "ip": ["tcp:443"], "app": {"tailscale.com/cap/drive": [{}]}}],
		"ssh": [{"action": "check", "src": ["group:admins"], "dst": ["tag:server"], "users": ["root"]}],
		"tests": [{"src": "alice@", "accept": ["tag:server:22"]}],
		"sshTests": [{"src": "alice@", "dst": ["tag:server"], "accept": ["root"]}]}`))
	f.Add([]byte(`{"hosts": {"a": "10.0.0.0/8"}, "grants": [{"src": ["a"], "dst": ["10.1.0.0/16"], "ip": ["*"], "via": ["tag:x"]}]}`))
	f.Add([]byte("// c\n{\"groups\": {\"group:a\": [\"x@\",],},}"))
	f.Fuzz(func(t *testing.T, src []byte) {
		pol, err := Parse(src)
		if err != nil || pol == nil {
			return
		}
		c, _, err := Compile(pol, testUsers, testNodes())
		if err != nil {
			return
		}
		for _, n := range testNodes() {
			c.Filter(n.ID)
			c.SSH(n.ID)
			c.CanSee(n.ID, 1)
		}
		_ = c.RunTests()
	})
}
