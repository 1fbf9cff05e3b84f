#!/usr/bin/env bash
# Builds the CRI clients the CRI integration tests drive, once, into a cache:
# crictl and critest from sigs.k8s.io/cri-tools, and makes sure Debian's CNI
# plugins (bridge, host-local, loopback in /usr/lib/cni) are installed.
# Prints the cache dir holding crictl and critest.
# Usage: ci/cri-deps.sh [DIR]   (default $HOME/.cache/cloak/cri-tools-VERSION)
#   CRITEST=0  build only crictl (make demo and make e2e run no critest)
set -euo pipefail

version=v1.37.0
dir=${1:-$HOME/.cache/cloak/cri-tools-$version}
mkdir -p "$dir"

if [ ! -x "$dir/crictl" ]; then
	echo "cri-deps: building crictl $version into $dir" >&2
	tmp=$(mktemp -d)
	CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-buildvcs=false \
		go install "sigs.k8s.io/cri-tools/cmd/crictl@$version" >&2
	mv "$tmp/crictl" "$dir/crictl"
	rm -rf "$tmp"
fi
if [ "${CRITEST:-1}" != 0 ] && [ ! -x "$dir/critest" ]; then
	echo "cri-deps: building critest $version into $dir" >&2
	# critest is a Ginkgo suite: cri-tools builds it with `go test -c` (it has
	# no main package to `go install`), from the module's own go.mod.
	src=$(go mod download -json "sigs.k8s.io/cri-tools@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	if [ -z "$src" ] || [ ! -d "$src/cmd/critest" ]; then
		echo "cri-deps: sigs.k8s.io/cri-tools@$version has no cmd/critest in the module cache" >&2
		exit 1
	fi
	tmp=$(mktemp -d)
	(cd "$src" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly" GOWORK=off \
		go test -c -o "$tmp/critest" ./cmd/critest >&2)
	mv "$tmp/critest" "$dir/critest"
	rm -rf "$tmp"
fi

if [ ! -x /usr/lib/cni/bridge ] || [ ! -x /usr/lib/cni/host-local ] || [ ! -x /usr/lib/cni/loopback ]; then
	echo "cri-deps: installing containernetworking-plugins (CNI bridge, host-local, loopback)" >&2
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq containernetworking-plugins >/dev/null 2>&1; then
		apt-get update -qq >&2
		apt-get install -y -qq containernetworking-plugins >&2
	fi
fi
echo "$dir"
