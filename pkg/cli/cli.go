// Package cli is the headscale command line: `serve` runs the server, the
// other verbs administer a running server over its unix socket with the
// same names and flags as Headscale's CLI.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/logging"
	"github.com/hsctl/headscale/pkg/server"
	"github.com/spf13/cobra"
)

// Env is what the CLI needs from the process, passed in so tests can run
// commands in-process.
type Env struct {
	Version string
	Stdout  io.Writer
	Stderr  io.Writer
	Environ []string
	// SystemRoot stands a directory in for / in Headscale's default paths
	// (config.LoadOptions.SystemRoot); "" in production.
	SystemRoot string
}

// app holds the flags shared by every command.
type app struct {
	env        Env
	configPath string
	output     string
	force      bool
}

// NewRoot returns the root command.
func NewRoot(env Env) *cobra.Command {
	a := &app{env: env}
	root := &cobra.Command{
		Use:   "headscale",
		Short: "headscale: a self-hosted control server for Tailscale clients",
		Long: "headscale runs a control server that official Tailscale clients join with `tailscale up --login-server URL`,\nand administers it. Configuration is read from --config, $HEADSCALE_CONFIG, /etc/headscale/config.yaml,\n$HOME/.headscale/config.yaml or ./config.yaml (or config.yml there); as in Headscale, relative key, database,\npolicy and TLS paths in it are taken from its directory.\n" +
			"As with Headscale, a file that does not set state_dir keeps the state in /var/lib/headscale and the socket at\n" +
			"/var/run/headscale/headscale.sock. With no file at all, the server runs on built-in defaults (127.0.0.1:8080, state\n" +
			"and socket in ./data), and the other commands use /var/run/headscale/headscale.sock if a server answers there, else\n" +
			"./data/headscale.sock.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	pf := root.PersistentFlags()
	pf.StringVarP(&a.configPath, "config", "c", "", "config file (default: $HEADSCALE_CONFIG, /etc/headscale/config.yaml, $HOME/.headscale/config.yaml, ./config.yaml; or config.yml)")
	pf.StringVarP(&a.output, "output", "o", "", "output format: json, json-line, yaml, as Headscale's CLI prints them (default: human-readable table)")
	pf.BoolVar(&a.force, "force", false, "do not ask for confirmation")
	root.AddCommand(a.serveCmd(), a.configtestCmd(), a.versionCmd(), a.healthCmd(), a.usersCmd(), a.preauthkeysCmd(), a.nodesCmd(),
		a.backupCmd(), a.restoreCmd(), a.policyCmd(), a.apikeysCmd(), a.authCmd(), a.routesCmd(), a.generateCmd(), a.debugCmd(), a.dbCmd())
	return root
}

// Execute runs the CLI with args and returns the process exit code.
func Execute(env Env, args []string) int {
	root := NewRoot(env)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		if o, _ := root.PersistentFlags().GetString("output"); o == "json" || o == "json-line" || o == "yaml" {
			b, _ := json.Marshal(map[string]string{"error": err.Error()})
			fmt.Fprintln(env.Stderr, string(b))
		} else if journalStream(env.Stderr, env.Environ) {
			// Under systemd a failed start must show in `journalctl -p err`.
			fmt.Fprintln(env.Stderr, logging.Priority(slog.LevelError)+"Error:", err)
		} else {
			fmt.Fprintln(env.Stderr, "Error:", err)
		}
		return 1
	}
	return 0
}

func (a *app) loadConfig(checks ...config.Check) (*config.Config, []config.Problem, error) {
	return config.Load(config.LoadOptions{Path: a.configPath, Env: a.env.Environ, SystemRoot: a.env.SystemRoot, Checks: checks})
}

// loadServeConfig is loadConfig plus the server's pre-flight checks: what
// serve would refuse at start, configtest refuses, in the same words.
func (a *app) loadServeConfig() (*config.Config, []config.Problem, error) {
	return a.loadConfig(server.Preflight)
}

// client returns an API client: a remote server when cli.address (or
// HEADSCALE_CLI_ADDRESS) is set, else this machine's unix socket, found
// from the config as the server finds it (config.Config.ClientSockets).
func (a *app) client() (*client, *config.Config, error) {
	cfg, _, err := a.loadConfig()
	if err != nil {
		return nil, nil, err
	}
	if cfg.CLI.Address != "" {
		c, err := newRemoteClient(cfg.CLI.Address, cfg.CLI.APIKey, cfg.CLI.Timeout, cfg.CLI.Insecure)
		return c, cfg, err
	}
	return newClient(cfg.ClientSockets, cfg.CLI.Timeout), cfg, nil
}

func (a *app) call(method, path string, body, out any) error {
	c, cfg, err := a.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.CLI.Timeout)
	defer cancel()
	return c.do(ctx, method, path, body, out)
}

// print writes v in the chosen output format as Headscale's CLI does (see
// printHS); without -o, table renders the human form.
func (a *app) print(v any, table func(w *tabwriter.Writer)) error {
	return a.printHS(v, func(out io.Writer) {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		table(tw)
		tw.Flush()
	})
}

func (a *app) confirm(question string) bool {
	if a.force || a.output != "" {
		return true
	}
	fmt.Fprintf(a.env.Stderr, "%s [y/N] ", question)
	var answer string
	fmt.Fscanln(os.Stdin, &answer)
	return strings.EqualFold(answer, "y") || strings.EqualFold(answer, "yes")
}

// versionInfo is what `version` prints, in the shape Headscale (0.27 and
// later) prints it, so scripts reading either keep working.
type versionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	BuildTime string `json:"buildTime"`
	Go        struct {
		Version string `json:"version"`
		OS      string `json:"os"`
		Arch    string `json:"arch"`
	} `json:"go"`
	Dirty bool `json:"dirty"`
}

// buildVersion fills a versionInfo from the release version and the
// build's VCS stamps ("unknown" where the build has none).
func buildVersion(version string) versionInfo {
	v := versionInfo{Version: version, Commit: "unknown", BuildTime: "unknown"}
	v.Go.Version, v.Go.OS, v.Go.Arch = runtime.Version(), runtime.GOOS, runtime.GOARCH
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Commit = s.Value
			case "vcs.time":
				v.BuildTime = s.Value
			case "vcs.modified":
				v.Dirty = s.Value == "true"
			}
		}
	}
	return v
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, build time and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := buildVersion(a.env.Version)
			return a.print(v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "headscale version %s\ncommit: %s\nbuild time: %s\nbuilt with: %s %s/%s\n",
					v.Version, v.Commit, v.BuildTime, v.Go.Version, v.Go.OS, v.Go.Arch)
			})
		},
	}
}

func (a *app) healthCmd() *cobra.Command {
	var metrics bool
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Check that the running server and its database answer (exit 0 healthy, 1 not)",
		Long: `health asks the running server, over its unix socket, whether its database answers. With --metrics it
also fetches /metrics from metrics_listen_addr. Exit status 0 means healthy; otherwise one line says what failed:
the reason the database does not answer, or, while the server waits at start for PostgreSQL, what it waits for
(host, port, database and user, and why: not reachable, password refused, no such database or role, TLS).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var h struct {
				DB     bool   `json:"databaseConnectivity"`
				Reason string `json:"reason"`
			}
			c, cfg, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), cfg.CLI.Timeout)
			defer cancel()
			if err := c.do(ctx, "GET", "/api/v1/health", nil, &h); err != nil {
				return err
			}
			status := "pass"
			var metricsErr error
			if metrics {
				metricsErr = checkMetrics(ctx, cfg.MetricsListenAddr)
			}
			if !h.DB || metricsErr != nil {
				status = "fail"
			}
			out := hsHealth{DatabaseConnectivity: h.DB}
			if metrics {
				ok := metricsErr == nil
				out.Metrics = &ok
			}
			if err := a.print(out, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "status: %s\ndatabase: %v\n", status, h.DB)
				if metrics {
					fmt.Fprintf(w, "metrics: %v\n", metricsErr == nil)
				}
			}); err != nil {
				return err
			}
			if !h.DB {
				if h.Reason != "" {
					return errors.New("database does not answer: " + h.Reason)
				}
				return errors.New("database does not answer")
			}
			return metricsErr
		},
	}
	cmd.Flags().BoolVar(&metrics, "metrics", false, "also check that /metrics answers on metrics_listen_addr")
	return cmd
}

func (a *app) configtestCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "configtest",
		Short: "Check the configuration without starting the server (exit 0 valid, 1 not)",
		Long:  "configtest loads and validates the configuration and the files it names, and refuses what serve would\nrefuse at start (a database type this build lacks, a file that does not load), without opening the\ndatabase or binding any port. Every problem is printed as file:line: key: reason.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, warnings, err := a.loadServeConfig()
			for _, w := range warnings {
				fmt.Fprintln(a.env.Stderr, "warning:", w.String())
			}
			var errs config.Errors
			if errors.As(err, &errs) {
				for _, p := range errs {
					fmt.Fprintln(a.env.Stderr, p.String())
				}
				return fmt.Errorf("configuration is invalid: %d problem(s)", len(errs))
			}
			if err != nil {
				return err
			}
			src := cfg.Source
			if src == "" {
				src = "built-in defaults"
			}
			fmt.Fprintf(a.env.Stdout, "configuration OK (%s)\n", src)
			return nil
		},
	}
}

func (a *app) serveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the control server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, warnings, err := a.loadServeConfig()
			if err != nil {
				return err
			}
			log := newLogger(cfg, a.env.Stderr, a.env.Environ)
			// Libraries that use the log package (tailscale.com's STUN
			// server) then log through the same handler: one format, one
			// timestamp, journal priorities.
			slog.SetDefault(log)
			for _, w := range warnings {
				log.Warn("configuration: " + w.String())
			}
			return serve(cmd.Context(), cfg, log, a.env.Version)
		},
	}
}

// newLogger logs to w; when w is the stream systemd connected to the
// journal it uses the journal form (priority prefixes, no timestamps).
func newLogger(cfg *config.Config, w io.Writer, environ []string) *slog.Logger {
	return logging.New(w, logging.Options{Level: cfg.Log.Level, Format: cfg.Log.Format, Journal: journalStream(w, environ)})
}

// journalStream reports whether w is the stream systemd connected to the
// journal.
func journalStream(w io.Writer, environ []string) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "JOURNAL_STREAM="); ok {
			return logging.IsJournal(f, v)
		}
	}
	return false
}

func ts(s string) string {
	if s == "" {
		return ""
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return t.Local().Format("2006-01-02 15:04:05")
}
