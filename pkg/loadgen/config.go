package loadgen

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"time"
)

// Phase names, in the order they run.
const (
	PhaseRegister  = "register"
	PhasePropagate = "propagate"
	PhaseChurn     = "churn"
	PhaseReconnect = "reconnect"
	PhaseSlow      = "slow"
)

// AllPhases lists every phase in the order they run.
func AllPhases() []string {
	return []string{PhaseRegister, PhasePropagate, PhaseChurn, PhaseReconnect, PhaseSlow}
}

// Config describes one load run.
type Config struct {
	// URL is the control server's URL (as given to tailscale up
	// --login-server), or several, comma-separated, of servers serving
	// one tailnet: node i then uses the (i mod k)-th.
	URL string
	// AuthKey is a reusable pre-auth key every simulated node registers
	// with.
	AuthKey string
	// N is the number of simulated nodes.
	N int
	// Concurrency is how many registrations run at once.
	Concurrency int
	// Phases to run, a subset of AllPhases; register always runs (it
	// creates the nodes) and the order is always that of AllPhases.
	Phases []string
	// Compress asks the server for zstd-compressed map frames.
	Compress bool
	// Ephemeral registers the nodes as ephemeral, so a server that honours
	// it deletes them once they go offline.
	Ephemeral bool
	// Hostname prefix of the simulated nodes; a random run ID follows.
	Hostname string

	// Watch is how many nodes change endpoints during the run; every node
	// tracks the newest endpoint of each of them. Default min(N, 256).
	Watch int
	// Changes is the number of single endpoint changes in the propagate
	// and slow phases.
	Changes int
	// ChangeTimeout bounds the wait for one change to reach every node.
	ChangeTimeout time.Duration
	// ChurnRate is the number of endpoint changes per second in the churn
	// phase; ChurnDuration how long they are sent for; ChurnGrace how long
	// after the last one every change may still take to arrive before it
	// counts as lost.
	ChurnRate     float64
	ChurnDuration time.Duration
	ChurnGrace    time.Duration
	// SlowFill is the number of endpoint changes sent while the slow node
	// is not reading, before the latency measurement, so that whatever the
	// server buffers for that node fills up.
	SlowFill int
	// SlowFillRate is the rate of those changes per second.
	SlowFillRate float64

	// Per-phase time limits.
	RegisterTimeout  time.Duration // all registrations
	ConvergeTimeout  time.Duration // every node holding every peer afterwards
	PropagateTimeout time.Duration
	ChurnTimeout     time.Duration // sending plus grace; 0: duration + grace + 1m
	ReconnectTimeout time.Duration
	SlowTimeout      time.Duration

	// ServerPID is the server's process ID for CPU and memory figures
	// (0: skip).
	ServerPID int
	// APIURL and APIKey, when the key is set, let the run check that the
	// server's REST API (GET /api/v1/node, Headscale's) lists every
	// simulated node. APIURL defaults to URL.
	APIURL string
	APIKey string

	// ProbeReconnect makes a node whose map stream broke wait a moment
	// (50-100 ms) and check with a plain TCP connect that the server
	// listens before it reconnects.
	// The Tailscale client library waits out its whole 10 s dial timeout
	// when a plain-HTTP server refuses the connection, so without the
	// probe a node that tries while the server restarts is gone for 10 s
	// (as tailscaled would be).
	ProbeReconnect bool

	// Seed for the random choices (0: from the clock).
	Seed int64
	// MaxFrame bounds one map frame, compressed and decoded.
	MaxFrame int
	// FrameMemory bounds the memory of big frames (full maps) being read
	// and decoded at once; others wait their turn.
	FrameMemory int
	// SampleEvery is how often the server's RSS is sampled.
	SampleEvery time.Duration
	// MemProfile, if set, is where a heap profile is written once the
	// nodes have converged.
	MemProfile string
	cpuProfile string // set by ParseFlags; Main profiles the run into it
	// Logf, if set, receives progress lines.
	Logf func(format string, args ...any)
}

// DefaultConfig returns a Config with every default filled in; URL and
// AuthKey are left empty.
func DefaultConfig() Config {
	return Config{
		N:                100,
		Concurrency:      32,
		Phases:           AllPhases(),
		Compress:         true,
		Hostname:         "load",
		Changes:          20,
		ChangeTimeout:    30 * time.Second,
		ChurnRate:        20,
		ChurnDuration:    30 * time.Second,
		ChurnGrace:       15 * time.Second,
		SlowFill:         600,
		SlowFillRate:     50,
		RegisterTimeout:  30 * time.Minute,
		ConvergeTimeout:  30 * time.Minute,
		PropagateTimeout: 5 * time.Minute,
		ReconnectTimeout: 30 * time.Minute,
		SlowTimeout:      5 * time.Minute,
		MaxFrame:         256 << 20,
		FrameMemory:      1 << 30,
		SampleEvery:      100 * time.Millisecond,
	}
}

// URLs are the servers URL names: node i uses URLs()[i%len].
func (c *Config) URLs() []string {
	var out []string
	for _, s := range strings.Split(c.URL, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (c *Config) check() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("--url is required"))
	}
	for _, s := range c.URLs() {
		if u, err := url.Parse(s); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("--url %q: want http(s)://host[:port], or several of them separated by commas", s))
		}
	}
	if c.AuthKey == "" {
		errs = append(errs, errors.New("--auth-key is required (a reusable pre-auth key)"))
	}
	if c.N < 2 {
		errs = append(errs, errors.New("-n must be at least 2"))
	}
	if c.Concurrency < 1 {
		errs = append(errs, errors.New("--concurrency must be at least 1"))
	}
	for _, p := range c.Phases {
		if !slices.Contains(AllPhases(), p) {
			errs = append(errs, fmt.Errorf("unknown phase %q (phases: %s)", p, strings.Join(AllPhases(), ",")))
		}
	}
	if c.Changes < 1 {
		errs = append(errs, errors.New("--changes must be at least 1"))
	}
	if c.ChurnRate <= 0 || c.ChurnDuration <= 0 {
		errs = append(errs, errors.New("--churn-rate and --churn-duration must be positive"))
	}
	if c.SlowFill > 0 && c.SlowFillRate <= 0 {
		errs = append(errs, errors.New("--slow-fill-rate must be positive"))
	}
	if c.MaxFrame < 1<<10 || c.FrameMemory < 1<<20 {
		errs = append(errs, errors.New("--max-frame must be at least 1 KiB and --frame-memory at least 1 MiB"))
	}
	if c.Watch < 0 || c.SlowFill < 0 {
		errs = append(errs, errors.New("--watch and --slow-fill must not be negative"))
	}
	return errors.Join(errs...)
}

// wants reports whether phase p was asked for.
func (c *Config) wants(p string) bool { return p == PhaseRegister || slices.Contains(c.Phases, p) }

// ParseFlags reads a Config from command-line arguments.
func ParseFlags(args []string, output io.Writer) (Config, string, error) {
	c := DefaultConfig()
	fs := flag.NewFlagSet("headscale-loadgen", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.Usage = func() {
		fmt.Fprintf(output, "Usage: headscale-loadgen --url URL --auth-key KEY [flags]\n\n"+
			"Simulates many Tailscale nodes over the real control protocol (Noise, HTTP/2,\n"+
			"/machine/register, streaming /machine/map) against any Tailscale control server\n"+
			"and measures registration, convergence and endpoint-update propagation.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var phases, jsonPath string
	fs.StringVar(&c.URL, "url", "", "control server URL (required); several servers of one tailnet: comma-separated, node i uses the (i mod k)-th")
	fs.StringVar(&c.AuthKey, "auth-key", "", "reusable pre-auth key (required)")
	fs.IntVar(&c.N, "n", c.N, "number of simulated nodes")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "registrations in flight at once")
	fs.StringVar(&phases, "phases", strings.Join(AllPhases(), ","), "comma-separated phases to run (register always runs)")
	fs.IntVar(&c.Changes, "changes", c.Changes, "endpoint changes measured one at a time in the propagate and slow phases")
	fs.DurationVar(&c.ChangeTimeout, "change-timeout", c.ChangeTimeout, "how long one change may take to reach every node")
	fs.Float64Var(&c.ChurnRate, "churn-rate", c.ChurnRate, "endpoint changes per second in the churn phase")
	fs.DurationVar(&c.ChurnDuration, "churn-duration", c.ChurnDuration, "how long the churn phase sends changes")
	fs.DurationVar(&c.ChurnGrace, "churn-grace", c.ChurnGrace, "how long a churn change may take to arrive before it counts as lost")
	fs.IntVar(&c.Watch, "watch", 0, "nodes that change endpoints (each node tracks their newest endpoint); 0: min(n, 256)")
	fs.IntVar(&c.SlowFill, "slow-fill", c.SlowFill, "changes sent unmeasured while the slow node stops reading, to fill the server's buffers for it")
	fs.Float64Var(&c.SlowFillRate, "slow-fill-rate", c.SlowFillRate, "changes per second of the slow-phase fill")
	fs.BoolVar(&c.Compress, "compress", c.Compress, "ask for zstd-compressed map frames")
	fs.BoolVar(&c.Ephemeral, "ephemeral", false, "register the nodes as ephemeral")
	fs.StringVar(&c.Hostname, "hostname", c.Hostname, "hostname prefix of the simulated nodes")
	fs.DurationVar(&c.RegisterTimeout, "register-timeout", c.RegisterTimeout, "time limit for registering all nodes")
	fs.DurationVar(&c.ConvergeTimeout, "converge-timeout", c.ConvergeTimeout, "time limit for every node to hold every peer after registration")
	fs.DurationVar(&c.PropagateTimeout, "propagate-timeout", c.PropagateTimeout, "time limit for the propagate phase")
	fs.DurationVar(&c.ChurnTimeout, "churn-timeout", 0, "time limit for the churn phase (0: churn-duration + churn-grace + 1m)")
	fs.DurationVar(&c.ReconnectTimeout, "reconnect-timeout", c.ReconnectTimeout, "time limit for the reconnect storm to converge")
	fs.DurationVar(&c.SlowTimeout, "slow-timeout", c.SlowTimeout, "time limit for the slow-reader phase")
	fs.IntVar(&c.ServerPID, "server-pid", 0, "server process ID for CPU and RSS figures (0: skip)")
	fs.StringVar(&c.APIURL, "api-url", "", "server REST API base URL for the node count check (default: --url)")
	fs.StringVar(&c.APIKey, "api-key", "", "API key for --api-url (empty: skip the node count check)")
	fs.StringVar(&jsonPath, "json", "", "also write the report as JSON to this file")
	fs.Int64Var(&c.Seed, "seed", 0, "random seed (0: from the clock)")
	fs.IntVar(&c.MaxFrame, "max-frame", c.MaxFrame, "largest map frame accepted, in bytes")
	fs.IntVar(&c.FrameMemory, "frame-memory", c.FrameMemory, "bytes of big frames (full maps) decoded at once; the rest wait")
	cpuProfile := fs.String("cpuprofile", "", "write the tool's CPU profile of the whole run here")
	fs.StringVar(&c.MemProfile, "memprofile", "", "write the tool's heap profile here after convergence")
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	if err := fs.Parse(args); err != nil {
		return c, "", err
	}
	if fs.NArg() > 0 {
		return c, "", fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	c.Phases = nil
	for _, p := range strings.Split(phases, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.Phases = append(c.Phases, p)
		}
	}
	c.cpuProfile = *cpuProfile
	if !*quiet {
		c.Logf = func(format string, args ...any) {
			fmt.Fprintf(output, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
		}
	}
	return c, jsonPath, c.check()
}

// Main is the headscale-loadgen command: it parses args, runs the load
// and prints the report. It returns the process exit code: 0 when every
// validation passed, 1 when one failed, 2 for a usage error.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, jsonPath, err := ParseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "headscale-loadgen:", err)
		return 2
	}
	if cur, max, err := RaiseFileLimit(); err != nil {
		fmt.Fprintln(stderr, "headscale-loadgen: raising the open file limit:", err)
	} else if cur < uint64(cfg.N)*2+64 {
		fmt.Fprintf(stderr, "headscale-loadgen: warning: open file limit %d (hard %d) is low for %d nodes\n", cur, max, cfg.N)
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "headscale-loadgen:", err)
			return 2
		}
		pprof.StartCPUProfile(f)
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	rep, err := Run(ctx, cfg)
	if rep != nil && len(rep.Phases) > 0 {
		rep.WriteTable(stdout)
		if jsonPath != "" {
			if werr := rep.WriteJSONFile(jsonPath); werr != nil {
				fmt.Fprintln(stderr, "headscale-loadgen:", werr)
				return 1
			}
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "headscale-loadgen:", err)
		return 1
	}
	if !rep.OK {
		return 1
	}
	return 0
}

// RaiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit and
// returns both: every simulated node holds a connection.
func RaiseFileLimit() (cur, max uint64, err error) { return raiseFileLimit() }
