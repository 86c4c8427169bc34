// Command protogen generates the Go code of the headscale.v1 gRPC API
// (pkg/headscalev1) from proto/headscale/v1/*.proto without protoc: it
// compiles the .proto files with github.com/bufbuild/protocompile and
// hands the result to protoc-gen-go and protoc-gen-go-grpc, both pinned in
// go.mod's tool block and run with `go tool`, as protoc would.
//
//	go run ./internal/protogen          # write pkg/headscalev1/*.pb.go (make proto)
//	go run ./internal/protogen -check   # fail if they differ from what would be written
//
// Run it from the repository root. TestGeneratedUpToDate runs the check.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/linker"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

const (
	// protoDir holds the .proto files, as their import paths see them
	// (headscale/v1/user.proto is proto/headscale/v1/user.proto).
	protoDir = "proto"
	// sourceDir is where the service's files are, under protoDir.
	sourceDir = "headscale/v1"
	// outDir is the generated package.
	outDir = "pkg/headscalev1"
	// module is this repository's module path: the plugins write paths
	// relative to it.
	module = "github.com/hsctl/headscale"
)

// plugins run in this order, each over every file.
var plugins = []string{"protoc-gen-go", "protoc-gen-go-grpc"}

func main() {
	root := flag.String("root", ".", "the repository root")
	check := flag.Bool("check", false, "only check that the generated files are up to date")
	flag.Parse()
	if err := run(*root, *check); err != nil {
		fmt.Fprintln(os.Stderr, "protogen:", err)
		os.Exit(1)
	}
}

func run(root string, check bool) error {
	files, err := Generate(context.Background(), root)
	if err != nil {
		return err
	}
	if check {
		return Compare(root, files)
	}
	stale, err := generatedFiles(root)
	if err != nil {
		return err
	}
	for _, p := range stale {
		if _, ok := files[p]; !ok {
			if err := os.Remove(filepath.Join(root, p)); err != nil {
				return err
			}
		}
	}
	for p, b := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, p), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Generate compiles the .proto files under root and returns the generated
// files by path relative to root.
func Generate(ctx context.Context, root string) (map[string][]byte, error) {
	entries, err := os.ReadDir(filepath.Join(root, protoDir, sourceDir))
	if err != nil {
		return nil, fmt.Errorf("reading the .proto files: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".proto") {
			names = append(names, sourceDir+"/"+e.Name())
		}
	}
	if len(names) == 0 {
		return nil, errors.New("no .proto files in " + filepath.Join(protoDir, sourceDir))
	}
	c := protocompile.Compiler{
		Resolver:       protocompile.WithStandardImports(&protocompile.SourceResolver{ImportPaths: []string{filepath.Join(root, protoDir)}}),
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	compiled, err := c.Compile(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("compiling: %w", err)
	}
	req := &pluginpb.CodeGeneratorRequest{FileToGenerate: names, Parameter: proto.String("module=" + module)}
	seen := map[string]bool{}
	var add func(f protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if seen[f.Path()] {
			return
		}
		seen[f.Path()] = true
		imports := f.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		req.ProtoFile = append(req.ProtoFile, fileProto(f))
	}
	for _, f := range compiled {
		add(f)
	}
	out := map[string][]byte{}
	for _, plugin := range plugins {
		files, err := runPlugin(ctx, root, plugin, req)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			name := filepath.ToSlash(f.GetName())
			if !strings.HasPrefix(name, outDir+"/") {
				return nil, fmt.Errorf("%s wrote %s, outside %s (go_package?)", plugin, name, outDir)
			}
			out[name] = []byte(f.GetContent())
		}
	}
	return out, nil
}

// fileProto is f as a FileDescriptorProto, with its comments.
func fileProto(f protoreflect.FileDescriptor) *descriptorpb.FileDescriptorProto {
	if r, ok := f.(linker.Result); ok {
		return r.FileDescriptorProto()
	}
	return protodesc.ToFileDescriptorProto(f)
}

// runPlugin runs one protoc plugin through `go tool`, as protoc would.
func runPlugin(ctx context.Context, root, plugin string, req *pluginpb.CodeGeneratorRequest) ([]*pluginpb.CodeGeneratorResponse_File, error) {
	in, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "go", "tool", plugin)
	cmd.Dir = root
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go tool %s: %w: %s", plugin, err, stderr.String())
	}
	var resp pluginpb.CodeGeneratorResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("go tool %s: reading its answer: %w", plugin, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("go tool %s: %s", plugin, resp.GetError())
	}
	return resp.File, nil
}

// generatedFiles lists the generated files now in outDir.
func generatedFiles(root string) ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(root, outDir, "*.pb.go"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range matches {
		rel, err := filepath.Rel(root, m)
		if err != nil {
			return nil, err
		}
		out = append(out, filepath.ToSlash(rel))
	}
	return out, nil
}

// Compare reports every generated file that is missing, stale or left
// over under root.
func Compare(root string, files map[string][]byte) error {
	var errs []error
	have, err := generatedFiles(root)
	if err != nil {
		return err
	}
	for _, p := range have {
		if _, ok := files[p]; !ok {
			errs = append(errs, fmt.Errorf("%s is not generated any more: remove it (make proto)", p))
		}
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		b, err := os.ReadFile(filepath.Join(root, p))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w (make proto)", p, err))
		case !bytes.Equal(b, files[p]):
			errs = append(errs, fmt.Errorf("%s differs from what proto/ generates: run make proto", p))
		}
	}
	return errors.Join(errs...)
}
