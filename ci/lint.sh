#!/usr/bin/env bash
# gofmt, go vet and staticcheck must be clean. staticcheck is installed from
# its Go module on first use into $HOME/.cache/cloak/staticcheck-<version>
# (not vendored; bump STATICCHECK_VERSION to move on).
set -euo pipefail
cd "$(dirname "$0")/.."
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "lint: gofmt needed on:" >&2; echo "$unformatted" >&2; exit 1
fi
go vet ./...

STATICCHECK_VERSION=${STATICCHECK_VERSION:-v0.8.2}
sc_dir=${CLOAK_CACHE:-$HOME/.cache/cloak}/staticcheck-$STATICCHECK_VERSION
staticcheck=$sc_dir/staticcheck
if [ ! -x "$staticcheck" ]; then
	echo "lint: installing staticcheck $STATICCHECK_VERSION into $sc_dir"
	if ! GOBIN=$sc_dir go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"; then
		echo "lint: could not install honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION from the Go module proxy ($(go env GOPROXY)); check the network or set STATICCHECK_VERSION to a version it serves" >&2
		exit 1
	fi
fi
"$staticcheck" ./...
