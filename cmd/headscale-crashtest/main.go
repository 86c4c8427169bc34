// Command headscale-crashtest kills a headscale server with SIGKILL at
// random moments while simulated nodes register and admin writers edit,
// restarts it each time and checks that nothing acknowledged was lost,
// that the database passes PRAGMA integrity_check and that every simulated
// node reconnects and converges. See pkg/crashtest and docs/runbook.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/hsctl/headscale/pkg/crashtest"
)

func main() {
	cfg := crashtest.DefaultConfig()
	fs := flag.NewFlagSet("headscale-crashtest", flag.ExitOnError)
	fs.StringVar(&cfg.Headscale, "headscale", "", "the headscale server binary to test (required; build it with go build ./cmd/headscale)")
	fs.StringVar(&cfg.Dir, "dir", "", "directory for the server's state and log (default: a temporary one, removed after a passing run)")
	fs.IntVar(&cfg.Iterations, "iterations", cfg.Iterations, "how many times to kill and restart the server")
	fs.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "simulated nodes that stay connected and must reconverge after every restart")
	fs.IntVar(&cfg.Registrations, "registrations", cfg.Registrations, "extra node registrations per iteration, during the load")
	fs.IntVar(&cfg.RegConcurrency, "reg-concurrency", cfg.RegConcurrency, "extra registrations in flight at once")
	fs.IntVar(&cfg.KeepProbes, "keep", cfg.KeepProbes, "extra nodes kept registered; older ones are deleted through the API")
	fs.IntVar(&cfg.Writers, "writers", cfg.Writers, "concurrent admin writers (REST API)")
	fs.DurationVar(&cfg.KillMin, "kill-min", cfg.KillMin, "earliest kill, after the iteration's load starts")
	fs.DurationVar(&cfg.KillMax, "kill-max", cfg.KillMax, "latest kill, after the iteration's load starts")
	fs.DurationVar(&cfg.ConvergeTimeout, "converge-timeout", cfg.ConvergeTimeout, "wait for every node to reconverge after a restart")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "bound on the whole run")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "seed for the random choices (0: from the clock)")
	jsonOut := fs.String("json", "", "also write the summary as JSON to this file")
	quiet := fs.Bool("quiet", false, "no progress lines")
	fs.Parse(os.Args[1:])
	if !*quiet {
		cfg.Logf = log.New(os.Stderr, "", log.Ltime).Printf
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := crashtest.Run(ctx, cfg)
	if sum != nil {
		sum.WriteText(os.Stdout)
		if *jsonOut != "" {
			b, _ := json.MarshalIndent(sum, "", "  ")
			if werr := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); werr != nil {
				fmt.Fprintln(os.Stderr, werr)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "headscale-crashtest:", err)
		os.Exit(2)
	}
	if !sum.OK {
		os.Exit(1)
	}
}
