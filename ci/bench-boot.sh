#!/usr/bin/env bash
# Boot benchmark, in one run: Cloak's image (its kernel, verified root disk),
# the floor (same kernel, trivial init) and the same userland on Debian's
# cloud kernel, QEMU start -> agent answered. Ends with the bench-boot: line
# docs/perf.md tracks (seconds; MiB of guest memory used after boot and of
# QEMU besides guest RAM, for Cloak's image).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench '^BenchmarkBoot$' -benchtime "${BENCHTIME:-5x}" -timeout 30m ./ci/integration | tee "$out"
awk '
function metric(name,   i) { for (i = 1; i < NF; i++) if ($(i+1) == name) return $i; return "" }
/^BenchmarkBoot\/cloak/ { c = $3; gu = metric("guest-used-MiB"); nr = metric("qemu-nonram-MiB") }
/^BenchmarkBoot\/floor/ { f = $3 }
/^BenchmarkBoot\/debian-kernel/ { d = $3 }
END {
	if (!c || !f || !d) { print "bench-boot: missing results (see the benchmark output above)" > "/dev/stderr"; exit 1 }
	printf "\nbench-boot: cloak=%.2f floor=%.2f debian-kernel=%.2f guest-used-mib=%.0f qemu-nonram-mib=%.0f\n", c/1e9, f/1e9, d/1e9, gu, nr
}' "$out"
