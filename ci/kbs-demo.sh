#!/usr/bin/env bash
# The attestation core alone (make demo-kbs): start a KBS with embedded storage, provision a key and
# a policy with kbsctl, attest with cloak-aa (sample TEE) and fetch the key,
# show the audit trail, stop everything. Exits non-zero if any step misbehaves.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cloak-demo.XXXXXX")
KBS_PID=

cleanup() {
	if [ -n "$KBS_PID" ] && kill -0 "$KBS_PID" 2>/dev/null; then
		kill "$KBS_PID"; wait "$KBS_PID" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

if [ -t 1 ]; then step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }; else step() { printf '\n==> %s\n' "$*"; }; fi
fail() { echo "demo: FAILED: $*" >&2; [ -f "$WORK/kbs.log" ] && tail -20 "$WORK/kbs.log" >&2; exit 1; }

step "Generate an admin key pair (Ed25519)"
"$BIN/kbsctl" keygen --private-key "$WORK/admin.key" --public-key "$WORK/admin.pub"

step "Start the KBS (TLS with a generated certificate, bbolt storage in $WORK/kbs)"
"$BIN/kbs" --listen 127.0.0.1:0 --data-dir "$WORK/kbs" --admin-public-key "$WORK/admin.pub" >"$WORK/kbs.log" 2>&1 &
KBS_PID=$!
for _ in $(seq 100); do
	URL=$(grep -o 'kbs listening on https://[0-9.:]*' "$WORK/kbs.log" | head -1 | sed 's/kbs listening on //') || true
	[ -n "${URL:-}" ] && break
	kill -0 "$KBS_PID" 2>/dev/null || fail "kbs exited early"
	sleep 0.1
done
[ -n "${URL:-}" ] || fail "kbs did not report its address"
CA="$WORK/kbs/tls/cert.pem"
echo "KBS at $URL (certificate $CA)"
export KBS_URL=$URL KBSCTL_ADMIN_KEY=$WORK/admin.key
CTL=("$BIN/kbsctl" --cacert "$CA")
AA=("$BIN/cloak-aa" get-resource --kbs "$URL" --kbs-cert "$CA" --tee sample)

step "Store a secret key in the KBS and set the reference value the sample TEE reports"
head -c 32 /dev/urandom >"$WORK/image.key"
"${CTL[@]}" resource set default/image-key/demo --file "$WORK/image.key"
"${CTL[@]}" reference-value set sample_svn 1
"${CTL[@]}" resource list

step "Attest with the default policy: the KBS must refuse the unsigned sample TEE"
if "${AA[@]}" kbs:///default/image-key/demo >"$WORK/out.bin" 2>"$WORK/aa.err"; then
	fail "the default resource policy released a key to sample evidence"
fi
cat "$WORK/aa.err"
grep -qi sample "$WORK/aa.err" || fail "the refusal does not say that sample evidence was the reason"

step "Install a development resource policy that accepts affirming sample evidence for this key"
cat >"$WORK/dev-policy.rego" <<'REGO'
package policy

import rego.v1

default allow := false

# Development only: the sample TEE proves nothing.
allow if {
	input.submods.cpu0["ear.status"] == "affirming"
	data["resource-path"] == "default/image-key/demo"
}
REGO
"${CTL[@]}" resource-policy set --file "$WORK/dev-policy.rego"

step "Attest again and fetch the key"
"${AA[@]}" kbs:///default/image-key/demo >"$WORK/out.bin"
cmp -s "$WORK/image.key" "$WORK/out.bin" || fail "the released key differs from the stored one"
echo "released key matches the stored key ($(wc -c <"$WORK/out.bin") bytes, sha256 $(sha256sum "$WORK/out.bin" | cut -c1-16)...)"

step "Audit trail (newest decisions)"
"${CTL[@]}" audit

step "Stop the KBS"
kill "$KBS_PID"; wait "$KBS_PID" 2>/dev/null || true; KBS_PID=
echo "demo: OK"
