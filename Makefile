# Cloak developer entry points. `make demo` and `make test` install what they
# need themselves: Go modules, and (as root, from Debian) QEMU 10 from
# bookworm-backports, busybox-static and the static libraries runc needs.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export GOFLAGS := -buildvcs=false
BINARIES := kbs kbsctl cloak cloak-aa cloak-image containerd-shim-cloak-v2 cloak-snapshotter
# The guest image is rebuilt from source each time (cheap: the kernel package
# and the static runc are cached under $$HOME/.cache/cloak).
IMAGE_DIR := $(CURDIR)/.work/image

.PHONY: all build image test unit fuzz-smoke lint bench bench-boot demo demo-kbs e2e bench-e2e demo-up demo-down generate clean deps vm-deps install bench-pod

all: build

deps:
	./ci/deps.sh

vm-deps:
	./ci/vm-deps.sh

build: deps
	mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

image: build vm-deps
	$(BIN)/cloak-image build --out $(IMAGE_DIR)

# All tests: lint, unit + integration tests (real HTTP/TLS, bbolt, gRPC on
# loopback and unix sockets, QEMU guests booting the built image), a short
# run of every fuzz target, the KBS demo, and the confidential pod end to end
# with its refusals.
test: deps lint unit fuzz-smoke demo-kbs e2e

unit: build image
	CLOAK_BIN=$(BIN) CLOAK_IMAGE_DIR=$(IMAGE_DIR) $(GO) test -race -count=1 -timeout 45m ./...

# Each fuzz target for a few seconds: finds regressions in the parsers of
# untrusted input without making CI slow. Run longer with FUZZTIME=5m.
FUZZTIME ?= 8s
fuzz-smoke: deps
	./ci/fuzz.sh $(FUZZTIME)

lint: deps
	./ci/lint.sh

bench: build
	./ci/bench.sh

# Boot time of the guest image beside a trivial init on the same kernel.
bench-boot: build image
	CLOAK_IMAGE_DIR=$(IMAGE_DIR) ./ci/bench-boot.sh

# Time of `ctr run --rm` of busybox echo with runc and Cloak (and runsc if
# installed), and the memory of one idle Cloak pod, in one run.
bench-pod: build image
	CLOAK_IMAGE_DIR=$(IMAGE_DIR) ./ci/bench-pod.sh

# Binaries to DESTDIR/PREFIX/bin, the guest image to /usr/share/cloak/image and
# one configuration per handler to /etc/cloak (never overwriting one), all under
# DESTDIR; prints the containerd configuration for the handlers.
PREFIX ?= /usr/local
install: build image
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" BIN=$(BIN) IMAGE_DIR=$(IMAGE_DIR) ./ci/install.sh

# The main job (as root): an encrypted image run as a confidential pod
# through containerd's CRI, with the pod start timeline.
demo: image
	./ci/e2e.sh demo

# demo, but the pod (and containerd, the KBS, the registry) keep running:
# writes .work/demo/env (CRICTL, POD_ID, CONTAINER_ID, POD_CONFIG,
# CONTAINER_CONFIG, KBSCTL); `make demo-down` stops everything.
demo-up: image
	./ci/e2e.sh up

demo-down:
	./ci/e2e.sh down

# demo, then: no plaintext on the host, and the refusals (guest image
# changed, another initdata, initdata changed after launch, policy deny, KBS
# frozen, KBS down).
e2e: image
	./ci/e2e.sh test

# Medians of 5 pod starts with runc, cloak and cloak-emulated, in one run.
bench-e2e: image
	./ci/e2e.sh bench

# The attestation core alone: KBS, kbsctl and cloak-aa with the sample TEE.
demo-kbs: build
	./ci/kbs-demo.sh

generate:
	./ci/generate.sh

clean:
	rm -rf $(BIN)
