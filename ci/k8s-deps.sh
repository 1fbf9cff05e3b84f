#!/usr/bin/env bash
# Builds the Kubernetes binaries `make k8s-up` runs, once, into a cache:
# kube-apiserver, kubelet and kubectl from k8s.io/kubernetes (through the
# wrapper module ci/k8s/build, which pins the 33 staging modules at their
# matching releases), and etcd from Debian's etcd-server package (unpacked,
# not installed: installing it would start a host etcd on port 2379).
# Prints the cache dir.
# Usage: ci/k8s-deps.sh [DIR]   (default $HOME/.cache/cloak/kubernetes-VERSION)
#
# No kube-scheduler and no kube-controller-manager: the cluster's pods name
# their node (spec.nodeName), and ci/k8s.sh makes the two objects the
# controller manager would (the default ServiceAccount and the
# kube-root-ca.crt ConfigMap).
set -euo pipefail

cd "$(dirname "$0")/k8s/build"
version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
dir=${1:-$HOME/.cache/cloak/kubernetes-$version}
bins=(kube-apiserver kubelet kubectl)

complete() {
	for b in "${bins[@]}" etcd etcdctl; do [ -x "$1/$b" ] || return 1; done
}
if complete "$dir"; then
	echo "$dir"
	exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
	echo "k8s-deps: etcd comes from Debian's etcd-server package, and this machine has no apt-get/dpkg" >&2
	exit 1
fi
mkdir -p "$(dirname "$dir")"
tmp=$(mktemp -d "$dir.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "k8s-deps: building ${bins[*]} $version into $dir (about 20 min on 2 cores, once)" >&2
t0=$(date +%s)
pkgs=()
for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
# Static binaries, as Kubernetes releases them; the module's own version
# stamped in so `kubectl version` and the node report it.
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$(cut -d. -f2 <<<"$version")"
	ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}" >&2
echo "k8s-deps: built in $(($(date +%s) - t0)) s" >&2

# etcd: Debian 12's etcd-server (3.4.23). kube-apiserver 1.37 accepts it; it
# only turns off RequestWatchProgress (fixed in etcd 3.4.31), which the
# watch cache then does without.
echo "k8s-deps: etcd from Debian's etcd-server package" >&2
(cd "$tmp" && apt-get download etcd-server etcd-client >&2) || {
	echo "k8s-deps: apt-get download etcd-server etcd-client failed: run apt-get update (as root) and retry" >&2
	exit 1
}
for deb in "$tmp"/etcd-*.deb; do dpkg -x "$deb" "$tmp/etcd-root"; done
mv "$tmp/etcd-root/usr/bin/etcd" "$tmp/etcd-root/usr/bin/etcdctl" "$tmp/"
rm -rf "$tmp/etcd-root" "$tmp"/etcd-*.deb
complete "$tmp" || {
	echo "k8s-deps: the build left no complete set in $tmp" >&2
	exit 1
}
chmod 755 "$tmp"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir"
