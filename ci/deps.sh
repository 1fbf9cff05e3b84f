#!/usr/bin/env bash
# Installs what builds and tests need. Idempotent and quiet when done before.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null; then
	if [ -x /usr/local/go/bin/go ]; then export PATH=/usr/local/go/bin:$PATH; else
		echo "deps: Go 1.26 is required (https://go.dev/dl/); not found on PATH" >&2; exit 1; fi
fi
go mod download
# PostgreSQL server binaries for the KBS storage tests (they start their own server; unit sets CLOAK_REQUIRE_POSTGRES).
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
