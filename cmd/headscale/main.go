// Command headscale is a self-hosted control server for Tailscale clients,
// compatible with Headscale's configuration, CLI and API.
package main

import (
	"os"

	"github.com/hsctl/headscale/pkg/cli"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(cli.Execute(cli.Env{Version: version, Stdout: os.Stdout, Stderr: os.Stderr, Environ: os.Environ()}, os.Args[1:]))
}
