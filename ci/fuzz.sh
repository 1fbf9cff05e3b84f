#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a while ($1, default 8s) and
# prints how many inputs each one ran. A target that ran fewer than its floor
# fails: a fuzz target that runs 10 inputs in 8 s passes but tests nothing.
#
# Environment:
#   FUZZ_MIN_RATE      floor in inputs per second of fuzz time (default 50).
#                      The targets aim at 1,000/s or more on the 2-core
#                      machine, but CI and developers share those cores with
#                      other work: at a load average of 8 we measured rates
#                      2-10x lower run to run, the slowest ordinary target at
#                      ~500/s, and machines of this kind differ 2-4x in
#                      speed. 50/s passes the slowest of them and still
#                      catches what issue 18 was about: set-up or a disk sync
#                      per input, or an input that stalls a parser, which ran
#                      1-14 inputs a second. 0 turns the floor off.
#   FUZZ_MINIMIZETIME  passed as -fuzzminimizetime (default 1s). Go spends up
#                      to 60 s minimizing every input that finds new coverage
#                      and counts none of those runs until it is done; on a
#                      1 KiB seed (an SNP report, a TDX quote) both workers
#                      spend the whole smoke run minimizing, which is the
#                      "100% CPU, no progress" of issue 18. A failing input
#                      is still written, only less minimized. fuzz-long
#                      passes Go's 60s.
#   FUZZ_ONLY          run only targets whose "pkg Name" matches this regex.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-8s}
min_rate=${FUZZ_MIN_RATE:-50}
minimizetime=${FUZZ_MINIMIZETIME:-1s}
only=${FUZZ_ONLY:-}

# Targets whose every input is expensive by nature, with the floor (inputs
# per second) they are held to instead and why: 10/s, a quarter of the
# slowest rate measured under load on the fast machine kind. Keep each reason with the
# rate measured (docs/perf.md, "Fuzz rates").
declare -A floor_rate=(
	# Compiles a whole Rego module with OPA per input (parse, type-check,
	# plan): 94-915/s measured.
	["./policy FuzzCompile"]=10
	# Decodes Kubernetes YAML and generates and compiles an agent policy
	# per input: 32-357/s alone or in CI, 3/s once with a benchmark and a
	# CI run beside it on 2 cores (its workers' start-up, which links
	# Kubernetes' API types and OPA, then eats most of 8 s). The floor
	# still catches the 1/s of a set-up per input.
	["./agentpolicy/generate FuzzGenerate"]=2
	# Makes a rootfs on tmpfs and unpacks two tar layers through os.Root
	# per input, syscalls for every entry: 13-427/s.
	["./guest-image/pull FuzzUnpack"]=10
	# End to end through the KBS handler: a session, an attest request and
	# an audit commit (tmpfs) per input: 245-339/s.
	["./kbs/server FuzzAttestBody"]=10
)

# seconds turns a Go duration of h/m/s parts (8s, 10m, 1m30s) into whole
# seconds; it prints nothing for a count ("1000x") or anything else.
seconds() {
	local d=$1 total=0 n unit
	[[ $d =~ ^([0-9]+[hms])+$ ]] || return 0
	while [[ $d =~ ^([0-9]+)([hms])(.*)$ ]]; do
		n=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]} d=${BASH_REMATCH[3]}
		case $unit in h) total=$((total + n * 3600)) ;; m) total=$((total + n * 60)) ;; s) total=$((total + n)) ;; esac
	done
	echo "$total"
}
secs=$(seconds "$fuzztime")

found=0
failed=()
summary=()
while IFS= read -r line; do
	file=${line%%:*}
	name=$(sed -E 's/^.*func (Fuzz[A-Za-z0-9_]*)\(.*$/\1/' <<<"${line#*:}")
	pkg=./$(dirname "$file")
	if [ -n "$only" ] && ! grep -qE "$only" <<<"$pkg $name"; then
		continue
	fi
	echo "fuzz: $pkg $name ($fuzztime)"
	# Go's fuzz coordinator sometimes gives up on a worker that is mid-run
	# when the time is up ("context deadline exceeded", no failing input).
	# That is the engine's timing, not a finding: run that target again, up
	# to 3 runs in all. A real finding ("Failing input written to ...")
	# fails at once.
	for try in 1 2 3; do
		if out=$(go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" -fuzzminimizetime="$minimizetime" "$pkg" 2>&1); then
			break
		fi
		echo "$out"
		if ! grep -q "context deadline exceeded" <<<"$out" || grep -q "Failing input written" <<<"$out" || [ "$try" = 3 ]; then
			exit 1
		fi
		echo "fuzz: $name: coordinator deadline without a failing input; running it again"
	done
	found=$((found + 1))
	# go test prints "fuzz: elapsed: 6s, execs: 23322 (3861/sec), ..." every
	# 3 s and once at the end, with or without -v; the rate in the last line
	# is of its last interval only (often 0/sec), so the rate here is the
	# total over the fuzz time.
	execs=$(grep -oE 'execs: [0-9]+' <<<"$out" | tail -1 | grep -oE '[0-9]+' || true)
	if [ -z "$execs" ]; then
		echo "$out"
		echo "fuzz: $pkg $name: go test printed no execs: line" >&2
		exit 1
	fi
	rate=-
	if [ -n "$secs" ] && [ "$secs" -gt 0 ]; then
		rate=$((execs / secs))
	fi
	want_rate=${floor_rate["$pkg $name"]:-$min_rate}
	verdict=ok
	if [ -n "$secs" ] && [ "$min_rate" -gt 0 ] && [ "$execs" -lt $((want_rate * secs)) ]; then
		verdict="TOO FEW (floor $want_rate/s)"
		failed+=("$pkg $name")
	fi
	msg=$(printf '%-32s %-26s %10s execs %7s/s  %s' "$pkg" "$name" "$execs" "$rate" "$verdict")
	echo "fuzz: $msg"
	summary+=("$msg")
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' . | sed -E 's/^\.\///; s/^([^:]*):[0-9]+:/\1:/' | sort)

echo "fuzz: $found targets, $fuzztime each:"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
	echo "fuzz: ${#failed[@]} targets ran fewer inputs than their floor: ${failed[*]}" >&2
	echo "fuzz: see docs/perf.md \"Fuzz rates\" for the usual causes (set-up per input, disk syncs, slow minimization)" >&2
	exit 1
fi
echo "fuzz: $found targets passed"
