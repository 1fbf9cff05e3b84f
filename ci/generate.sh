#!/usr/bin/env bash
# Regenerates the checked-in protobuf/gRPC Go code. Installs protoc (Debian
# package) when missing and the Go plugins at pinned versions into a private
# tool directory, so the output does not depend on what is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

# protoc-gen-go comes from the protobuf module go.mod already requires;
# protoc-gen-go-grpc is its own module, pinned here.
PROTOC_GEN_GO_GRPC_VERSION=v1.5.1

if ! command -v protoc >/dev/null; then
	echo "generate: installing protoc (apt-get install protobuf-compiler)" >&2
	apt-get update -qq
	apt-get install -y -qq protobuf-compiler >/dev/null
fi

tools=$(pwd)/.work/gen-tools
mkdir -p "$tools"
protobuf_version=$(go list -m -f '{{.Version}}' google.golang.org/protobuf)
GOBIN=$tools GOFLAGS= go install "google.golang.org/protobuf/cmd/protoc-gen-go@${protobuf_version}"
GOBIN=$tools GOFLAGS= go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"
export PATH=$tools:$PATH

# Each .proto is generated next to itself (paths=source_relative).
protos=(api/attestationv1/attestation.proto api/agentapi/agent.proto)
for p in "${protos[@]}"; do
	echo "generate: $p" >&2
	protoc -I "$(dirname "$p")" \
		--go_out="$(dirname "$p")" --go_opt=paths=source_relative \
		--go-grpc_out="$(dirname "$p")" --go-grpc_opt=paths=source_relative \
		"$p"
done
