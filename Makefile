# Cloak developer entry points. `make demo` and `make test` install what they
# need themselves (Go modules; later issues add apt packages and QEMU).

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export GOFLAGS := -buildvcs=false
BINARIES := kbs kbsctl cloak-aa

.PHONY: all build test unit fuzz-smoke lint bench demo generate clean deps

all: build

deps:
	./ci/deps.sh

build: deps
	mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

# All tests: lint, unit + integration tests (real HTTP/TLS, bbolt, gRPC on
# loopback and unix sockets), a short run of every fuzz target, and the demo.
test: deps lint unit fuzz-smoke demo

unit: build
	$(GO) test -race -count=1 ./...

# Each fuzz target for a few seconds: finds regressions in the parsers of
# untrusted input without making CI slow. Run longer with FUZZTIME=5m.
FUZZTIME ?= 8s
fuzz-smoke: deps
	./ci/fuzz.sh $(FUZZTIME)

lint: deps
	./ci/lint.sh

bench: build
	./ci/bench.sh

demo: build
	./ci/demo.sh

generate:
	./ci/generate.sh

clean:
	rm -rf $(BIN)
