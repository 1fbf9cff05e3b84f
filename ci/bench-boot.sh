#!/usr/bin/env bash
# Boot benchmark: QEMU start -> agent answered, Cloak image beside the floor
# (same kernel, trivial init), in one run. Prints the ratio docs/perf.md tracks.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'Boot' -benchtime "${BENCHTIME:-5x}" -timeout 30m ./ci/integration | tee "$out"
awk '
/^BenchmarkBoot\/cloak/ { c = $3; for (i = 1; i < NF; i++) { if ($(i+1) == "qemu-rss-MiB") cr = $i; if ($(i+1) == "guest-used-MiB") gu = $i } }
/^BenchmarkBoot\/floor/ { f = $3; for (i = 1; i < NF; i++) if ($(i+1) == "qemu-rss-MiB") fr = $i }
END {
	if (!c || !f) { print "bench-boot: missing results" > "/dev/stderr"; exit 1 }
	printf "\nboot to agent answered: cloak %.2f s, floor %.2f s, ratio %.2fx; QEMU RSS cloak %s MiB, floor %s MiB; guest memory used after boot %s MiB\n", c/1e9, f/1e9, c/f, cr, fr, gu
}' "$out"
