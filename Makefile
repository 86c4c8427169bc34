# headscale: build the binaries and the Debian packages.
#
#   make build                 dist/<arch>/headscale for linux amd64 and arm64
#   make deb                   dist/headscale_<version>_<arch>.deb (nfpm, packaging/deb/mkdeb)
#   make deb VERSION=0.1.1     another version (semver; 0.2.0-rc.1 becomes 0.2.0~rc.1)
#   make deb DIST=/tmp/out     another output directory
#   make test                  the whole test suite
#   make proto                 regenerate pkg/headscalev1 from proto/headscale/v1 (no protoc needed)
#   make loadtest N=10000      the load tool against a fresh server (docs/performance.md)
#   make loadtest N=10000 DB=postgres   the same on a throwaway local PostgreSQL
#   make loadtest-engines N=10000       both engines back to back, with a summary table
#   make loadtest-cluster N=10000 SERVERS=2   one tailnet on 2 cluster servers over one PostgreSQL
#   make crashtest             kill -9 the server 100 times under load (docs/performance.md)
#   make import-bench          take over a synthetic 10,000-node Headscale database (docs/performance.md)
#   make clean                 remove $(DIST)
#
# Time stamps in the packages come from SOURCE_DATE_EPOCH (default: the date
# of the last commit), so one commit always gives the same bytes.

VERSION ?= 0.1.0
DIST ?= dist
ARCHES ?= amd64 arm64
GO ?= go
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1767225600)
export SOURCE_DATE_EPOCH

LDFLAGS := -s -w -X main.version=$(VERSION)

N ?= 1000
DB ?= sqlite

.PHONY: all build deb mkdeb test lint proto loadtest loadtest-engines loadtest-cluster crashtest import-bench clean

all: build

build:
	@set -e; for arch in $(ARCHES); do \
		echo "go build linux/$$arch -> $(DIST)/$$arch/headscale"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" \
			-o $(DIST)/$$arch/headscale ./cmd/headscale; \
	done

# mkdeb runs on the build machine; built with the same flags as the binaries
# so that it reuses their compiled packages.
mkdeb:
	@mkdir -p $(DIST)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(DIST)/mkdeb ./packaging/deb/mkdeb
	@$(DIST)/mkdeb -check-version -version '$(VERSION)' >/dev/null

deb: mkdeb build
	@set -e; for arch in $(ARCHES); do \
		$(DIST)/mkdeb -root . -version '$(VERSION)' -arch $$arch -binary $(DIST)/$$arch/headscale -out $(DIST); \
	done

test:
	$(GO) test -count=1 -timeout 60m ./...

# The static checks CI runs: go vet and staticcheck (pinned in go.mod as a
# Go tool, so everyone runs the same version).
lint:
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# The gRPC API's Go code: proto/headscale/v1/*.proto compiled with
# protocompile and the plugins pinned in go.mod's tool block
# (internal/protogen). TestGeneratedUpToDate fails until this is run.
proto:
	$(GO) run ./internal/protogen

# One line: seconds per takeover of a 10,000-node Headscale 0.27.1 database.
import-bench:
	$(GO) test -run XXX -bench TakeOver10k -benchtime 3x ./pkg/hsimport/ | grep '^BenchmarkTakeOver10k'

loadtest:
	DB=$(DB) cmd/headscale-loadgen/loadtest.sh $(N)

# SQLite, then PostgreSQL, in one session; ends with a Markdown table of
# both against the targets (docs/performance.md).
loadtest-engines:
	cmd/headscale-loadgen/engines.sh $(N)

# One tailnet on SERVERS cluster servers over one PostgreSQL, N nodes
# spread over them: cross-server latency, CPU and RSS per server, database
# round trips per change (docs/performance.md).
SERVERS ?= 2
loadtest-cluster:
	cmd/headscale-loadgen/cluster.sh $(N) $(SERVERS)

ITERATIONS ?= 100

crashtest:
	@mkdir -p $(DIST)
	CGO_ENABLED=0 $(GO) build -o $(DIST)/headscale-crashtest-server ./cmd/headscale
	CGO_ENABLED=0 $(GO) build -o $(DIST)/headscale-crashtest ./cmd/headscale-crashtest
	nice -n 10 $(DIST)/headscale-crashtest -headscale $(DIST)/headscale-crashtest-server -iterations $(ITERATIONS)

clean:
	rm -rf $(DIST)
