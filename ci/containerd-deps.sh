#!/usr/bin/env bash
# Builds the container stack the containerd integration tests drive, once, into
# a cache: containerd, ctr and containerd-shim-runc-v2 at the containerd version
# go.mod pins (the shim library and the daemon must match), and runc v1.4.3
# (Debian's runc 1.1.5 is too old for containerd v2's CRI). Prints the cache dir.
# Usage: ci/containerd-deps.sh [DIR]   (default $HOME/.cache/cloak/containerd-VERSION)
set -euo pipefail

cd "$(dirname "$0")/.."
version=$(go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
runc_version=v1.4.3
dir=${1:-$HOME/.cache/cloak/containerd-$version}
mkdir -p "$dir"

missing=()
for b in containerd ctr containerd-shim-runc-v2; do
	[ -x "$dir/$b" ] || missing+=("./cmd/$b")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "containerd-deps: building containerd $version (${missing[*]}) into $dir" >&2
	# Built from the module cache of this repo's go.mod version; CGO off gives
	# static binaries without btrfs/devmapper headers.
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	for m in "${missing[@]}"; do
		CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-buildvcs=false \
			go install "github.com/containerd/containerd/v2/${m#./}@$version" >&2
	done
	mv "$tmp"/* "$dir"/
fi
if [ ! -x "$dir/runc" ]; then
	echo "containerd-deps: building runc $runc_version into $dir" >&2
	# runc needs cgo (libseccomp, nsexec); ci/vm-deps.sh installs libseccomp-dev.
	tmp=$(mktemp -d)
	CGO_ENABLED=1 GOBIN="$tmp" GOFLAGS=-buildvcs=false \
		go install -tags seccomp "github.com/opencontainers/runc@$runc_version" >&2
	mv "$tmp/runc" "$dir/runc"
	rm -rf "$tmp"
fi
echo "$dir"
