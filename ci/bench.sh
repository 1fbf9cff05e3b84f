#!/usr/bin/env bash
# KBS handshake benchmark beside the crypto floor, in one run, plus the storage
# variants (kbs binaries on bbolt, on PostgreSQL with one and three replicas)
# and the policy micro-benchmarks. Prints the ratio that docs/perf.md tracks.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'Handshake|CryptoFloor' -benchtime "${BENCHTIME:-2000x}" -count "${COUNT:-3}" ./ci/integration | tee "$out"
# Starts its own PostgreSQL (Debian's postgresql package, ci/deps.sh).
CLOAK_REQUIRE_POSTGRES=1 go test -run '^$' -bench 'HandshakeStorage' -benchtime "${BENCHTIME:-2000x}" -count "${COUNT:-3}" ./kbs/server | tee -a "$out"
go test -run '^$' -bench . -benchtime 2000x ./policy
awk '
/^BenchmarkHandshake\/keepalive/ { hs += $3; nh++ }
/^BenchmarkHandshake\/newconn/   { nc += $3; nn++ }
/^BenchmarkHandshake\/binary/    { for (i = 1; i < NF; i++) if ($(i+1) == "kbs-cpu-us/handshake") { cpu += $i; nb++ } }
/^BenchmarkHandshake\/emulated-snp/ { for (i = 1; i < NF; i++) if ($(i+1) == "handshakes/s") { es += $i; ne++ } }
/^BenchmarkCryptoFloor/          { cf += $3; nc2++ }
/^BenchmarkHandshakeStorage\// {
	split($1, name, "/"); v = name[2]; sub(/-[0-9]+$/, "", v)
	if (!(v in sn)) order[++nv] = v
	sn[v]++
	for (i = 1; i < NF; i++) {
		if ($(i+1) == "handshakes/s") shs[v] += $i
		if ($(i+1) == "p50-ms") sp50[v] += $i
		if ($(i+1) == "p99-ms") sp99[v] += $i
		if ($(i+1) == "kbs-cpu-us/handshake") scpu[v] += $i
	}
}
END {
	if (!nh || !nc2) { print "bench: missing results" > "/dev/stderr"; exit 1 }
	for (j = 1; j <= nv; j++) {
		v = order[j]; n = sn[v]
		printf "storage %-10s %6.0f handshakes/s, p50 %5.1f ms, p99 %6.1f ms, kbs CPU %5.0f us/handshake = %.2fx the crypto floor\n", v, shs[v]/n, sp50[v]/n, sp99[v]/n, scpu[v]/n, (scpu[v]*1000/n)/(cf/nc2)
	}
	printf "\nmean ns per handshake: keepalive %.0f, newconn %.0f; crypto floor %.0f ns\n", hs/nh, nc/nn, cf/nc2
	printf "handshake / crypto floor: keepalive %.2fx, newconn %.2fx (goal: <= 2x)\n", (hs/nh)/(cf/nc2), (nc/nn)/(cf/nc2)
	if (nb) printf "kbs process CPU per handshake %.0f us = %.2fx the crypto floor\n", cpu/nb, (cpu*1000/nb)/(cf/nc2)
	if (ne) printf "emulated-snp handshakes/s %.0f (full SNP chain and report verification)\n", es/ne
}' "$out"
