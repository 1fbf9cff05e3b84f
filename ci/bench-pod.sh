#!/usr/bin/env bash
# Pod benchmark: `ctr run --rm` of busybox echo through a real containerd with
# runc, Cloak and (where installed) gVisor's runsc, then the memory of one idle
# Cloak pod, in one run. Prints the lines docs/perf.md tracks.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'BenchmarkPod' -benchtime "${BENCHTIME:-5x}" -timeout 30m ./ci/integration | tee "$out"
awk '
function metric(name,   i) { for (i = 1; i < NF; i++) if ($(i+1) == name) return $i; return "" }
/^BenchmarkPod\/runc(-[0-9]+)?[ \t]/  { runc = $3 }
/^BenchmarkPod\/cloak(-[0-9]+)?[ \t]/ { cloak = $3 }
/^BenchmarkPod\/runsc(-[0-9]+)?[ \t]/ { runsc = $3 }
/^BenchmarkPod\/idle(-[0-9]+)?[ \t]/  { idle = $3; shim = metric("shim-pss-MiB"); qemu = metric("qemu-pss-MiB"); rest = metric("qemu-nonram-pss-MiB") }
END {
	if (!runc || !cloak || !idle) { print "bench-pod: missing results" > "/dev/stderr"; exit 1 }
	printf "\nctr run --rm echo: runc %.2f s, cloak %.2f s (%.1fx runc)", runc/1e9, cloak/1e9, cloak/runc
	if (runsc) printf ", runsc %.2f s", runsc/1e9; else printf ", runsc skipped (not installed: go test -v shows why)"
	printf "\nidle cloak pod: ctr run -d to running %.2f s; PSS shim %s MiB, QEMU %s MiB (%s MiB besides guest RAM)\n", idle/1e9, shim, qemu, rest
	printf "host memory besides guest RAM (QEMU + shim): %.1f MiB (promise: <= 128 MiB)\n", shim + rest
}' "$out"
