package cli

import (
	"bufio"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
)

// runbookPath is the operator runbook, relative to this package.
const runbookPath = "../../docs/runbook.md"

// runbookCommand is one headscale invocation found in a code block of the
// runbook.
type runbookCommand struct {
	line int
	text string
	args []string // the arguments after "headscale"
}

// placeholder matches a whole-word placeholder such as <user> or <node-id>.
var placeholder = regexp.MustCompile(`^<[^<>]+>$`)

// shellStop reports whether a token ends the headscale command on a shell
// line: a pipe, a list operator, a redirection or a comment.
func shellStop(tok string) bool {
	switch tok {
	case "|", "||", "&&", ";", "&":
		return true
	}
	return strings.HasPrefix(tok, "#") || strings.HasPrefix(tok, ">") || strings.HasPrefix(tok, "2>") ||
		strings.HasPrefix(tok, "<") && !placeholder.MatchString(tok)
}

// headscaleArgs returns the arguments of a headscale command on a shell
// line, or ok=false when the line does not run headscale. It accepts the
// forms the runbook uses: "headscale ...", "sudo headscale ...",
// "$ headscale ...", "runuser -u headscale -- headscale ..." and
// "sudo -u headscale headscale ...".
func headscaleArgs(line string) (args []string, ok bool) {
	toks := strings.Fields(line)
	if len(toks) > 0 && (toks[0] == "$" || toks[0] == "#") {
		toks = toks[1:]
	}
	if len(toks) > 0 && toks[0] == "sudo" {
		toks = toks[1:]
		if len(toks) >= 2 && toks[0] == "-u" {
			toks = toks[2:]
		}
	}
	if len(toks) > 0 && toks[0] == "runuser" {
		i := 0
		for i < len(toks) && toks[i] != "--" {
			i++
		}
		if i == len(toks) {
			return nil, false
		}
		toks = toks[i+1:]
	}
	if len(toks) == 0 || (toks[0] != "headscale" && toks[0] != "/usr/bin/headscale") {
		return nil, false
	}
	for _, t := range toks[1:] {
		if shellStop(t) {
			break
		}
		t = strings.Trim(t, `"'`)
		if placeholder.MatchString(t) {
			// A value for a flag or a positional argument; "1" parses as
			// every flag type the CLI has (string, number, list).
			t = "1"
		}
		args = append(args, t)
	}
	return args, true
}

// runbookCommands extracts the headscale command lines from the fenced code
// blocks of a Markdown document. Lines continued with a backslash are
// joined first.
func runbookCommands(r io.Reader) ([]runbookCommand, error) {
	var out []runbookCommand
	sc := bufio.NewScanner(r)
	inBlock := false
	n := 0
	pending, pendingLine := "", 0
	for sc.Scan() {
		n++
		raw := sc.Text()
		trimmed := strings.TrimSpace(raw)
		if strings.HasPrefix(trimmed, "```") {
			inBlock = !inBlock
			pending = ""
			continue
		}
		if !inBlock {
			continue
		}
		if pending == "" {
			pendingLine = n
		}
		if cont, ok := strings.CutSuffix(trimmed, `\`); ok {
			pending += cont + " "
			continue
		}
		full := pending + trimmed
		pending = ""
		if args, ok := headscaleArgs(full); ok {
			out = append(out, runbookCommand{line: pendingLine, text: full, args: args})
		}
	}
	return out, sc.Err()
}

// TestRunbookCommands keeps docs/runbook.md true to the CLI: every headscale
// command in its code blocks must name an existing command (not just a
// command group), use only flags that command knows (its own or inherited),
// and pass the command's argument count check.
func TestRunbookCommands(t *testing.T) {
	f, err := os.Open(runbookPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmds, err := runbookCommands(f)
	if err != nil {
		t.Fatal(err)
	}
	// Guard against the parser silently finding nothing.
	if len(cmds) < 20 {
		t.Fatalf("found only %d headscale commands in %s; the extractor is broken or the runbook lost its examples", len(cmds), runbookPath)
	}
	verbs := map[string]bool{}
	for _, c := range cmds {
		root := NewRoot(Env{Version: "test", Stdout: io.Discard, Stderr: io.Discard})
		cmd, rest, err := root.Find(c.args)
		if err != nil {
			t.Errorf("runbook line %d: %q: %v", c.line, c.text, err)
			continue
		}
		if cmd == root {
			t.Errorf("runbook line %d: %q: no headscale command named", c.line, c.text)
			continue
		}
		if cmd.HasSubCommands() {
			_ = cmd.ParseFlags(rest)
			if extra := cmd.Flags().Args(); len(extra) > 0 {
				t.Errorf("runbook line %d: %q: %s has no command %q", c.line, c.text, cmd.CommandPath(), extra[0])
			} else {
				t.Errorf("runbook line %d: %q: %q is a command group; name one of its commands", c.line, c.text, cmd.CommandPath())
			}
			continue
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Errorf("runbook line %d: %q: %s: %v", c.line, c.text, cmd.CommandPath(), err)
			continue
		}
		for _, a := range rest {
			if name, ok := strings.CutPrefix(a, "--"); ok && name != "" {
				name, _, _ = strings.Cut(name, "=")
				if cmd.Flags().Lookup(name) == nil {
					t.Errorf("runbook line %d: %q: %s has no flag --%s", c.line, c.text, cmd.CommandPath(), name)
				}
			}
		}
		if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
			t.Errorf("runbook line %d: %q: %s: %v", c.line, c.text, cmd.CommandPath(), err)
		}
		verbs[cmd.CommandPath()] = true
	}
	t.Logf("checked %d headscale commands (%d distinct)", len(cmds), len(verbs))
}

// TestRunbookExtractor checks the extractor on the line forms it must
// recognise and the ones it must skip.
func TestRunbookExtractor(t *testing.T) {
	doc := "text headscale users list outside a block\n" +
		"```sh\n" +
		"headscale users create alice\n" +
		"sudo headscale nodes list -o json | jq .\n" +
		"$ headscale preauthkeys create --user <user> --reusable   # comment\n" +
		"runuser -u headscale -- headscale backup --output /tmp/x.sqlite 2>&1\n" +
		"headscale -c /root/x.yaml \\\n" +
		"    nodes expire -i <node-id>\n" +
		"headscale: a maintainer-script message\n" +
		"tailscale up --login-server https://x\n" +
		"```\n"
	got, err := runbookCommands(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"users", "create", "alice"},
		{"nodes", "list", "-o", "json"},
		{"preauthkeys", "create", "--user", "1", "--reusable"},
		{"backup", "--output", "/tmp/x.sqlite"},
		{"-c", "/root/x.yaml", "nodes", "expire", "-i", "1"},
	}
	if len(got) != len(want) {
		t.Fatalf("extracted %d commands, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if strings.Join(got[i].args, " ") != strings.Join(want[i], " ") {
			t.Errorf("command %d: args %q, want %q", i, got[i].args, want[i])
		}
	}
}
