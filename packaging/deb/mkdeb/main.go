// Command mkdeb builds the headscale Debian package for one architecture
// with nfpm's deb packager, from a binary built by `make build`:
//
//	mkdeb -version 0.1.0 -arch amd64 -binary dist/amd64/headscale -out dist
//
// writes dist/headscale_0.1.0_amd64.deb. With -assets DIR it only writes the
// generated documentation (changelog, man pages, shell completions) into DIR,
// for goreleaser's nfpms section. Time stamps come from -source-date-epoch
// or SOURCE_DATE_EPOCH, else a fixed date, so the same inputs give the same
// bytes.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/hsctl/headscale/packaging/deb"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkdeb", flag.ContinueOnError)
	root := fs.String("root", ".", "repository root")
	version := fs.String("version", "", "version as built into the binary (e.g. 0.1.0)")
	arch := fs.String("arch", "", "architecture: amd64 or arm64")
	binary := fs.String("binary", "", "headscale binary built for -arch with -ldflags \"-s -w\" (default: dist/<arch>/headscale)")
	out := fs.String("out", "dist", "output directory for the .deb")
	assets := fs.String("assets", "", "only write the generated documentation into this directory")
	check := fs.Bool("check-version", false, "only print the Debian version for -version and exit")
	epoch := fs.String("source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "time stamp of every file, in seconds since 1970 (default: $SOURCE_DATE_EPOCH, else 2026-01-01)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *version == "" {
		return fmt.Errorf("-version is required")
	}
	date, err := deb.DateFromEnv(func(string) string { return *epoch })
	if err != nil {
		return err
	}
	switch {
	case *check:
		v, err := deb.DebianVersion(*version)
		if err != nil {
			return err
		}
		fmt.Println(v)
		return nil
	case *assets != "":
		entries, err := deb.GenerateAssets(*assets, *version, date)
		if err != nil {
			return err
		}
		fmt.Printf("mkdeb: wrote %d files into %s\n", len(entries), *assets)
		return nil
	}
	if *arch == "" {
		return fmt.Errorf("-arch is required")
	}
	if *binary == "" {
		*binary = "dist/" + *arch + "/headscale"
	}
	p, err := deb.Build(deb.Options{Root: *root, Version: *version, Arch: *arch, Binary: *binary, OutDir: *out, Date: date})
	if err != nil {
		return err
	}
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	fmt.Printf("mkdeb: wrote %s (%d bytes)\n", p, st.Size())
	return nil
}
