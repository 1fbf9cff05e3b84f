#!/usr/bin/env bash
# KBS handshake benchmark beside the crypto floor, in one run, plus the policy
# micro-benchmarks. Prints the ratio that docs/perf.md tracks.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'Handshake|CryptoFloor' -benchtime "${BENCHTIME:-2000x}" -count "${COUNT:-3}" ./ci/integration | tee "$out"
go test -run '^$' -bench . -benchtime 2000x ./policy
awk '
/^BenchmarkHandshake\/keepalive/ { hs += $3; nh++ }
/^BenchmarkHandshake\/newconn/   { nc += $3; nn++ }
/^BenchmarkHandshake\/binary/    { for (i = 1; i < NF; i++) if ($(i+1) == "kbs-cpu-us/handshake") { cpu += $i; nb++ } }
/^BenchmarkHandshake\/emulated-snp/ { for (i = 1; i < NF; i++) if ($(i+1) == "handshakes/s") { es += $i; ne++ } }
/^BenchmarkCryptoFloor/          { cf += $3; nc2++ }
END {
	if (!nh || !nc2) { print "bench: missing results" > "/dev/stderr"; exit 1 }
	printf "\nmean ns per handshake: keepalive %.0f, newconn %.0f; crypto floor %.0f ns\n", hs/nh, nc/nn, cf/nc2
	printf "handshake / crypto floor: keepalive %.2fx, newconn %.2fx (goal: <= 2x)\n", (hs/nh)/(cf/nc2), (nc/nn)/(cf/nc2)
	if (nb) printf "kbs process CPU per handshake %.0f us = %.2fx the crypto floor\n", cpu/nb, (cpu*1000/nb)/(cf/nc2)
	if (ne) printf "emulated-snp handshakes/s %.0f (full SNP chain and report verification)\n", es/ne
}' "$out"
