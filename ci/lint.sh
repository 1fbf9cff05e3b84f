#!/usr/bin/env bash
# gofmt and go vet must be clean.
set -euo pipefail
cd "$(dirname "$0")/.."
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "lint: gofmt needed on:" >&2; echo "$unformatted" >&2; exit 1
fi
go vet ./...
