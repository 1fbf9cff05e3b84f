# Cloak developer entry points. `make demo` and `make test` install what they
# need themselves: Go modules, and (as root, from Debian) QEMU 10 from
# bookworm-backports, busybox-static and the static libraries runc needs.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export GOFLAGS := -buildvcs=false
BINARIES := kbs kbsctl cloak cloak-aa cloak-image containerd-shim-cloak-v2 cloak-snapshotter
# The guest image is rebuilt from source each time (cheap: Cloak's compiled
# kernel, Debian's kernel package and the static runc are cached under
# $$HOME/.cache/cloak; the first build compiles the kernel, ~6 min on 2 cores).
IMAGE_DIR := $(CURDIR)/.work/image

.PHONY: kernel-repro all build image test unit fuzz-smoke fuzz-long lint bench bench-boot demo demo-kbs e2e bench-e2e demo-up demo-down generate clean deps vm-deps install release bench-pod

all: build

deps:
	./ci/deps.sh

vm-deps:
	./ci/vm-deps.sh

# Stamped into every binary (internal/version; cloak-image stamps the guest's
# the same way). A tree with uncommitted changes says -dirty.
VERSION ?= $(or $(shell git describe --tags --always --dirty 2>/dev/null),dev)
COMMIT ?= $(or $(shell git rev-parse HEAD 2>/dev/null),unknown)
VERSION_LDFLAGS := -X github.com/cloak-containers/cloak/internal/version.Version=$(VERSION) \
	-X github.com/cloak-containers/cloak/internal/version.Commit=$(COMMIT)

build: deps
	mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(VERSION_LDFLAGS)" -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

# The SEV-SNP and TDX reference values are computed over the OVMF builds
# vm-deps caches (ci/vm-deps.sh, OVMF_VERSION): every value the cloak-snp and
# cloak-tdx handlers can launch goes into manifest.json.
OVMF_DIR ?= $(HOME)/.cache/cloak/ovmf-2026.08+ds-2
# ci/e2e.sh points the emulated SEV-SNP platform at the same SNP build.
export OVMF_DIR
image: build vm-deps
	$(BIN)/cloak-image build --out $(IMAGE_DIR) \
		--snp-firmware $(OVMF_DIR)/OVMF.amdsev.fd --tdx-firmware $(OVMF_DIR)/OVMF.inteltdx.fd

# Compiles Cloak's guest kernel a second time and checks it equals the cached
# build; prints the line for guest-image/build/kbuild/known-builds.txt.
kernel-repro: vm-deps
	CLOAK_KERNEL_REPRO=1 $(GO) test -count=1 -v -timeout 40m -run 'TestBuildReproducible|TestBuiltKernel' ./guest-image/build/kbuild

# All tests: lint, unit + integration tests (real HTTP/TLS, bbolt, gRPC on
# loopback and unix sockets, QEMU guests booting the built image), a short
# run of every fuzz target, the KBS demo, and the confidential pod end to end
# with its refusals.
test: deps lint unit fuzz-smoke demo-kbs e2e

unit: build image
	CLOAK_REQUIRE_POSTGRES=1 CLOAK_BIN=$(BIN) CLOAK_IMAGE_DIR=$(IMAGE_DIR) $(GO) test -race -count=1 -timeout 45m ./...
	CLOAK_KBS_TEST_STORAGE=postgres $(GO) test -race -count=1 ./kbs/server

# Each fuzz target for a few seconds: finds regressions in the parsers of
# untrusted input without making CI slow, and fails a target that ran fewer
# inputs than its floor (ci/fuzz.sh; rates in docs/perf.md "Fuzz rates").
FUZZTIME ?= 8s
fuzz-smoke: deps
	./ci/fuzz.sh $(FUZZTIME)

# Each target for 10 minutes (about 9 hours for all of them), with Go's own
# 60 s minimization of new inputs: for a machine left to fuzz, not for CI.
FUZZLONGTIME ?= 10m
fuzz-long: deps
	FUZZ_MINIMIZETIME=60s ./ci/fuzz.sh $(FUZZLONGTIME)

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
# With RELEASE=FILE (a tarball from make release) it installs that release's
# bytes, verified against its SHA256SUMS, and builds nothing.
PREFIX ?= /usr/local
install: $(if $(RELEASE),,build image)
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" RELEASE="$(RELEASE)" BIN=$(BIN) IMAGE_DIR=$(IMAGE_DIR) ./ci/install.sh

# A versioned tarball in .work/release: the host binaries, the guest image
# with its manifest (and its reference values signed with SIGN_KEY=KEY.pem if
# given), the handler configurations, the installer, SHA256SUMS and an SPDX
# SBOM of the Go modules. Install it with make install RELEASE=FILE.
release: build image
	VERSION=$(VERSION) SIGN_KEY="$(SIGN_KEY)" BIN=$(BIN) IMAGE_DIR=$(IMAGE_DIR) ./ci/release.sh

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

# A one-node Kubernetes cluster (as root), in a network namespace of its own:
# etcd, kube-apiserver and a kubelet on containerd with the runc, cloak and
# cloak-emulated handlers (ci/k8s-deps.sh builds Kubernetes v1.37.2 from its
# Go module once, ~20 min on 2 cores). Writes .work/k8s/env (KUBECTL, RUN,
# IMAGE); `make k8s-down` stops everything and removes its files.
.PHONY: k8s-up k8s-down k8s-e2e
k8s-up: image
	./ci/k8s.sh up

k8s-down:
	./ci/k8s.sh down

# The cluster up, a runc pod and a cloak-emulated pod by kubectl (Running,
# their output in kubectl logs), down, and nothing left. Not in `make test` yet.
k8s-e2e: image
	./ci/k8s.sh e2e
