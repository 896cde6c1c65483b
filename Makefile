# The README's two commands are `make demo` and `make test`.
GO ?= go
FUZZTIME ?= 5s

.PHONY: all build test fuzz deps proto demo bench clean soak

all: build

## build: bin/rmb-registrar, bin/rmb-relay, bin/rmb-peer and bin/rmb
build:
	@mkdir -p bin
	$(GO) build -o bin/rmb-registrar ./cmd/registrar
	$(GO) build -o bin/rmb-relay ./cmd/relay
	$(GO) build -o bin/rmb-peer ./cmd/peer
	$(GO) build -o bin/rmb ./cmd/rmb

## test: install missing system packages, vet, run every test with -race, fuzz briefly
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

## fuzz: every fuzz target for a minute each
fuzz:
	FUZZTIME=60s ./scripts/fuzz.sh

deps:
	@./scripts/deps.sh

## proto: regenerate pkg/envelope/types.pb.go from proto/types.proto
proto: deps
	protoc --plugin=protoc-gen-go=$$($(GO) tool -n protoc-gen-go) \
		--go_out=. --go_opt=module=github.com/rmb-go/rmb proto/types.proto

## bench: micro-benchmarks of the hot paths
bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./pkg/...

clean:
	rm -rf bin

## demo: registrar, relay, Redis, two peers, a calculator and real calls (DEMO_KEEP=1 stays up)
demo: build
	@./scripts/deps.sh demo
	./bin/rmb demo

## soak: relay, two peers and Redis under mixed load for SOAK_DURATION (default 5m); fails on loss or a leak trend
soak: deps
	$(GO) run ./test/soak
