#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a short time ($1, default 8s).
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-8s}
found=0
while IFS= read -r line; do
	file=${line%%:*}
	name=$(sed -E 's/^.*func (Fuzz[A-Za-z0-9_]*)\(.*$/\1/' <<<"${line#*:}")
	pkg=./$(dirname "$file")
	echo "fuzz: $pkg $name ($fuzztime)"
	go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg"
	found=$((found + 1))
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' . | sed -E 's/^\.\///; s/^([^:]*):[0-9]+:/\1:/')
echo "fuzz: $found targets passed"
