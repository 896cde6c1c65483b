# The README's two commands are `make demo` and `make test`.
GO ?= go
FUZZTIME ?= 5s
# What --version, the status page, rmb.version and rmb_build_info show.
VERSION ?= $(shell git describe --tags --match 'v*' --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)
BUILDINFO := github.com/rmb-go/rmb/internal/buildinfo
LDFLAGS := -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).commit=$(COMMIT)

.PHONY: all build test fuzz deps proto demo bench clean soak release

all: build

## build: bin/rmb-registrar, bin/rmb-relay, bin/rmb-peer and bin/rmb, static (no libc needed)
build:
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/rmb-registrar ./cmd/registrar
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/rmb-relay ./cmd/relay
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/rmb-peer ./cmd/peer
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/rmb ./cmd/rmb

## release: static versioned binaries for linux/amd64 and linux/arm64 in dist/, with SHA256SUMS
release:
	GO=$(GO) VERSION=$(VERSION) COMMIT=$(COMMIT) ./scripts/release.sh

## test: install missing system packages, gofmt check, vet, run every test with -race, fuzz briefly
test: deps
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

## fuzz: every fuzz target for a minute each
fuzz:
	FUZZTIME=60s ./scripts/fuzz.sh

deps:
	@./scripts/deps.sh

## proto: regenerate pkg/envelope/types.pb.go and types_vtproto.pb.go (decoder) from proto/types.proto
proto: deps
	protoc --plugin=protoc-gen-go=$$($(GO) tool -n protoc-gen-go) \
		--go_out=. --go_opt=module=github.com/rmb-go/rmb \
		--plugin=protoc-gen-go-vtproto=$$($(GO) tool -n protoc-gen-go-vtproto) \
		--go-vtproto_out=. --go-vtproto_opt=module=github.com/rmb-go/rmb,features=unmarshal \
		proto/types.proto

## bench: micro-benchmarks of the hot paths
bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./pkg/...

clean:
	rm -rf bin dist

## demo: registrar, relay, Redis, two peers, a calculator and real calls (DEMO_KEEP=1 stays up)
demo: build
	@./scripts/deps.sh demo
	./bin/rmb demo

## soak: relay, two peers and Redis under mixed load for SOAK_DURATION (default 5m); fails on loss or a leak trend
soak: deps
	$(GO) run ./test/soak
