#!/usr/bin/env bash
# A confidential pod end to end, on this machine, with real parts only: a
# registry on loopback, an image encrypted with ocicrypt (kbsctl image
# encrypt), the KBS (embedded bbolt storage) holding its key,
# containerd v2 with the cloak handlers and the guest-pull snapshotter, and
# crictl running the encrypted image as a pod of the cloak-emulated handler:
# a QEMU guest with an emulated SEV-SNP platform that attests to the KBS, gets
# the key, pulls and decrypts the image itself.
#
# The pod is docs/examples/confidential-pod.yaml: `cloak generate` turns it
# into the pod's initdata (KBS and agent policy) and the crictl configs.
#
# Usage: ci/e2e.sh [demo|test|bench|up|down]
#   demo   the happy path: the container's output, its start timeline, the
#          host's exec refused by the agent policy, the probe's exec allowed
#   test   demo, then checks that the host holds no plaintext, and the refusals:
#          a container with another command, guest image changed, another
#          initdata, initdata changed after launch, policy deny, KBS frozen,
#          KBS down
#   bench  5 pod starts each with runc, cloak and cloak-emulated, medians
#          (BENCH_RUNS=N to change)
#   up     demo, but the pod and everything it needs keep running; writes
#          .work/demo/env (CRICTL, POD_ID, CONTAINER_ID, POD_CONFIG,
#          CONTAINER_CONFIG, KBSCTL, SECRET_RESOURCE, SEALED_RESOURCE,
#          HOST_DIRS) and returns
#   down   stops what `up` started and removes its files
#
# Needs root (network namespace, TAP devices, QEMU) and `make build image`.
# Everything runs in a network namespace of its own, so its fixed ports
# (registry 5000, KBS 8443) never meet the host's; everything it starts is
# stopped, and its files removed, when it ends (KEEP=1 keeps the files).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-demo}
case "$MODE" in demo | test | bench | up | down) ;; *)
	echo "usage: $0 [demo|test|bench|up|down]" >&2
	exit 2
	;;
esac
DEMO_DIR=$PWD/.work/demo # what `up` leaves for `down` (and for the user)

if [ "$MODE" = down ]; then
	if [ ! -f "$DEMO_DIR/inner.pid" ]; then
		echo "demo-down: nothing is up (no $DEMO_DIR/inner.pid)"
		rm -rf "$DEMO_DIR"
		exit 0
	fi
	inner=$(cat "$DEMO_DIR/inner.pid")
	outer=$(cat "$DEMO_DIR/outer.pid" 2>/dev/null || true)
	echo "demo-down: stopping the demo (pid $inner): pod, containerd, KBS, registry, network namespace"
	kill -TERM "$inner" 2>/dev/null || true
	for _ in $(seq 600); do
		kill -0 "$inner" 2>/dev/null || { [ -n "$outer" ] && kill -0 "$outer" 2>/dev/null; } || break
		sleep 0.1
	done
	if [ -n "$outer" ] && kill -0 "$outer" 2>/dev/null; then
		echo "demo-down: the demo did not stop within 60 s; killing it" >&2
		kill -9 "$outer" "$inner" 2>/dev/null || true
	fi
	tail -3 "$DEMO_DIR/log" 2>/dev/null | sed 's/^/    /'
	rm -rf "$DEMO_DIR"
	echo "demo-down: done"
	exit 0
fi

if [ "$MODE" = up ] && [ -z "${CLOAK_E2E_BG:-}" ]; then
	if [ -f "$DEMO_DIR/inner.pid" ] && kill -0 "$(cat "$DEMO_DIR/inner.pid")" 2>/dev/null; then
		echo "demo-up: the demo is already up ($DEMO_DIR/env); \`make demo-down\` stops it" >&2
		exit 1
	fi
	rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR"
	CLOAK_E2E_BG=1 setsid "$0" up >"$DEMO_DIR/log" 2>&1 </dev/null &
	echo $! >"$DEMO_DIR/outer.pid"
	echo "demo-up: starting (log: $DEMO_DIR/log)"
	shown=0
	while [ ! -f "$DEMO_DIR/env" ]; do
		if ! kill -0 "$(cat "$DEMO_DIR/outer.pid")" 2>/dev/null; then
			tail -n +$((shown + 1)) "$DEMO_DIR/log"
			echo "demo-up: FAILED (see above; log $DEMO_DIR/log)" >&2
			rm -f "$DEMO_DIR/outer.pid"
			exit 1
		fi
		n=$(wc -l <"$DEMO_DIR/log")
		[ "$n" -gt "$shown" ] && { sed -n "$((shown + 1)),${n}p" "$DEMO_DIR/log"; shown=$n; }
		sleep 0.5
	done
	tail -n +$((shown + 1)) "$DEMO_DIR/log"
	cat <<EOF

demo-up: the confidential pod is running. Try:
    . $DEMO_DIR/env
    \$CRICTL logs \$CONTAINER_ID
    \$CRICTL exec -s \$CONTAINER_ID cat /tmp/healthy    # the liveness probe: allowed
    \$CRICTL exec -s \$CONTAINER_ID sh                  # refused by the pod's agent policy
    \$KBSCTL audit
make demo-down stops it.
EOF
	exit 0
fi
BIN=${BIN:-$PWD/bin}
IMAGE_DIR=${IMAGE_DIR:-$PWD/.work/image}
CACHE=${CLOAK_CACHE:-$HOME/.cache/cloak}
GATEWAY=10.88.0.1 # the CNI bridge in our namespace: the pods' gateway
REGISTRY=127.0.0.1:5000
KBS_PORT=8443
KEY_PATH=default/image-key/demo
# The workload's own secrets (fresh values per run): one the container
# fetches at run time from the in-guest API, one it gets as a sealed env
# variable (docs/secrets.md).
SECRET_RESOURCE=default/demo/runtime-value
SEALED_RESOURCE=default/demo/sealed-value
SEALING_KEY=default/sealed-secret-keys/demo
HANDLER=cloak-emulated

# Each step is numbered, with the time since the start and the time the
# previous step took; colour only on a terminal (logs get plain text).
E2E_T0=${E2E_T0:-$(date +%s)}
E2E_STEP=${E2E_STEP:-0}
step_t=$(date +%s)
if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B='' N=''; fi
bold() {
	local now
	now=$(date +%s)
	E2E_STEP=$((E2E_STEP + 1))
	if [ "$E2E_STEP" -gt 1 ]; then
		printf '    (%ds)\n' $((now - step_t))
	fi
	step_t=$now
	printf '\n%s==> %s%s  [step %d, %d:%02d]\n' "$B" "$*" "$N" "$E2E_STEP" $(((now - E2E_T0) / 60)) $(((now - E2E_T0) % 60))
}
say() { printf '    %s\n' "$*"; }
indent() { sed 's/^/    /'; }

# ---------------------------------------------------------------------------
# Outside the namespace: prerequisites, then run the rest inside a fresh one.
if [ -z "${CLOAK_E2E_NS:-}" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "e2e: needs root (a network namespace, TAP devices and QEMU); run it with sudo" >&2
		exit 1
	fi
	for f in "$BIN/containerd-shim-cloak-v2" "$BIN/kbs" "$BIN/kbsctl" "$BIN/cloak-snapshotter" "$BIN/cloak-image" "$IMAGE_DIR/manifest.json"; do
		[ -e "$f" ] || {
			echo "e2e: $f is missing: run \`make build image\` first" >&2
			exit 1
		}
	done
	bold "Prerequisites (built once into $CACHE)"
	CTRD_DIR=$(./ci/containerd-deps.sh)
	CRI_DIR=$(CRITEST=0 ./ci/cri-deps.sh) # crictl only: nothing here runs critest
	crane_version=$(go list -m -f '{{.Version}}' github.com/google/go-containerregistry)
	CRANE=$CACHE/crane-$crane_version/crane
	if [ ! -x "$CRANE" ]; then
		say "building crane $crane_version (registry and image tool)"
		mkdir -p "$(dirname "$CRANE")"
		CGO_ENABLED=0 GOBIN="$(dirname "$CRANE")" go install "github.com/google/go-containerregistry/cmd/crane@$crane_version"
	fi
	for tool in busybox ip nsenter sha384sum; do
		command -v "$tool" >/dev/null || {
			echo "e2e: $tool is missing (\`make vm-deps\` installs busybox-static; iproute2 and coreutils come with Debian)" >&2
			exit 1
		}
	done
	# Built here: the namespace has no route to the Go module proxy. (The
	# inner part enters only the network namespace: `ip netns exec` would
	# also remount /sys, hiding the cgroup mounts runc needs.)
	TOOLS=$(mktemp -d /tmp/cloak-e2e-tools.XXXXXX)
	go build -o "$TOOLS/" ./ci/timeline ./ci/integration/testdata/cri/pause
	NS=cloak-e2e-$$
	ip netns add "$NS"
	leave() {
		# Anything still running in the namespace is ours.
		for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
		ip netns del "$NS" 2>/dev/null || true
		rm -rf "$TOOLS"
	}
	trap leave EXIT
	ip -n "$NS" link set lo up
	say "network namespace $NS (the registry, the KBS, containerd and the pods live in it)"
	status=0
	E2E_T0=$E2E_T0 E2E_STEP=$E2E_STEP CLOAK_E2E_NS=$NS DEMO_DIR=$DEMO_DIR TOOLS=$TOOLS CTRD_DIR=$CTRD_DIR CRI_DIR=$CRI_DIR CRANE=$CRANE BIN=$BIN IMAGE_DIR=$IMAGE_DIR \
		nsenter --net=/run/netns/"$NS" "$0" "$MODE" || status=$?
	exit $status
fi

# ---------------------------------------------------------------------------
# Inside the namespace.
WORK=$(mktemp -d /tmp/cloak-e2e.XXXXXX) # short: socket paths stay under 108 bytes
PIDS=()
KBS_PID=
CTRD_PID=
FAILS=0

start_bg() { # start_bg LOG CMD...: run in the background, remember the pid
	local log=$1
	shift
	"$@" >"$log" 2>&1 &
	PIDS+=($!)
	LAST_PID=$!
}
stop_pid() {
	local pid=$1
	[ -n "$pid" ] || return 0
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 150); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	echo "e2e: pid $pid did not stop on SIGTERM; killing it" >&2
	kill -9 "$pid" 2>/dev/null || true
}
crictl() { "$CRI_DIR/crictl" --config "$WORK/crictl.yaml" "$@"; }
kbsctl() { "$BIN/kbsctl" --url "https://127.0.0.1:$KBS_PORT" --cacert "$WORK/kbs/tls/cert.pem" --admin-key "$WORK/admin.key" "$@"; }
qemus() { pgrep -f -- "$WORK/vm" | while read -r p; do [[ "$(readlink /proc/"$p"/exe 2>/dev/null)" == *qemu-system* ]] && echo "$p"; done || true; }

cleanup() {
	status=$?
	set +e
	if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
		for id in $(crictl pods -q 2>/dev/null); do crictl rmp -f "$id" >/dev/null 2>&1; done
		stop_pid "$CTRD_PID"
	fi
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
	for p in $(qemus); do
		echo "e2e: QEMU $p outlived its pod; killing it" >&2
		kill -9 "$p"
		status=1
	done
	# Mounts containerd or a failed pod left (none when all went well).
	awk -v d="$WORK" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r umount -l
	if [ "$status" != 0 ] && [ -f "$WORK/containerd.log" ]; then
		echo "---- containerd log (tail) ----" >&2
		tail -40 "$WORK/containerd.log" >&2
		for c in "$WORK"/console/*.log; do
			[ -f "$c" ] && { echo "---- guest console $c (tail) ----" >&2; tail -15 "$c" >&2; }
		done
	fi
	if [ -n "${KEEP:-}" ]; then echo "e2e: files kept in $WORK" >&2; else rm -rf "$WORK"; fi
	exit "$status"
}
trap cleanup EXIT

fail() {
	echo "e2e: FAILED: $*" >&2
	exit 1
}
# check DESCRIPTION COMMAND...: a test-mode assertion; failures are counted
# and reported together at the end.
check() {
	local what=$1
	shift
	if "$@"; then
		say "ok: $what"
	else
		say "FAILED: $what"
		FAILS=$((FAILS + 1))
	fi
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
	local secs=$1 what=$2
	shift 2
	for _ in $(seq $((secs * 10))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	fail "$what did not happen within ${secs}s"
}

mkdir -p "$WORK"/{cni,console,vm,logs,certs.d/$REGISTRY,emulated-snp}
TIMELINE=$TOOLS/timeline

# ---------------------------------------------------------------------------
bold "Registry on loopback ($REGISTRY), a small image, and the pod sandbox image"
start_bg "$WORK/registry.log" "$CRANE" registry serve --address "0.0.0.0:5000"
wait_for 10 "the registry answering" "$CRANE" catalog --insecure "$REGISTRY"
SECRET_MESSAGE="the secret recipe: 3 parts trust, 1 part attestation"
mkdir -p "$WORK/rootfs"/{bin,app,etc,tmp}
cp "$(command -v busybox)" "$WORK/rootfs/bin/busybox"
for a in sh cat uname sleep wget; do ln -s busybox "$WORK/rootfs/bin/$a"; done
printf '%s\n' "$SECRET_MESSAGE" >"$WORK/rootfs/etc/recipe.txt"
cat >"$WORK/rootfs/app/run.sh" <<'EOF'
#!/bin/sh
echo "hello from a confidential pod (guest kernel $(uname -r))"
echo "fetched at run time from the in-guest API: $(wget -qO- http://127.0.0.1:8006/cdh/resource/default/demo/runtime-value)"
echo "from a sealed env variable: ${SEALED_VALUE:-}"
cat /etc/recipe.txt
: >/tmp/healthy # what the liveness probe reads
# With --stay (the demo's pod) the container stays up after printing.
[ "${1:-}" = --stay ] && exec sleep 2147483647
exit 0
EOF
chmod 755 "$WORK/rootfs/app/run.sh"
tar -C "$WORK/rootfs" -cf "$WORK/app.tar" .
crane() { "$CRANE" "$@" 2>>"$WORK/crane.log"; }
crane append --insecure --oci-empty-base -f "$WORK/app.tar" -t "$REGISTRY/demo/hello:base" >/dev/null
crane mutate --insecure "$REGISTRY/demo/hello:base" --set-platform linux/amd64 --cmd /app/run.sh -t "$REGISTRY/demo/hello:plain" >/dev/null
mkdir -p "$WORK/pauseroot" && cp "$TOOLS/pause" "$WORK/pauseroot/pause"
tar -C "$WORK/pauseroot" -cf "$WORK/pause.tar" .
crane append --insecure --oci-empty-base -f "$WORK/pause.tar" -t "$REGISTRY/pause:base" >/dev/null
crane mutate --insecure "$REGISTRY/pause:base" --set-platform linux/amd64 --entrypoint /pause -t "$REGISTRY/pause:3.10" >/dev/null
say "$REGISTRY/demo/hello:plain runs /app/run.sh, which prints /etc/recipe.txt"

# ---------------------------------------------------------------------------
bold "KBS: admin key, emulated SEV-SNP root, TLS for the guests at $GATEWAY:$KBS_PORT"
"$BIN/kbsctl" keygen --private-key "$WORK/admin.key" --public-key "$WORK/admin.pub" >/dev/null
# The image builder's key: the KBS trusts the reference values it signed.
"$BIN/kbsctl" keygen --private-key "$WORK/builder.key" --public-key "$WORK/builder.pub" >/dev/null
# The shim creates the same chain in emulated_snp_dir on first use; the KBS
# must trust it (a test root: never give it to a KBS guarding real secrets).
"$BIN/cloak-image" emulated-root --dir "$WORK/emulated-snp" >"$WORK/emulated-root.pem"
mkdir -p "$WORK/collateral" # empty: the KBS fetches nothing from AMD
start_bg "$WORK/kbs.log" "$BIN/kbs" --listen "0.0.0.0:$KBS_PORT" --data-dir "$WORK/kbs" \
	--admin-public-key "$WORK/admin.pub" --tls-san "$GATEWAY" --tls-san 127.0.0.1 \
	--snp-extra-root "$WORK/emulated-root.pem" --snp-crl if-available \
	--collateral-offline --collateral-dir "$WORK/collateral" --reference-value-signer "$WORK/builder.pub"
KBS_PID=$LAST_PID
wait_for 20 "the KBS answering" kbsctl resource list
say "KBS pid $KBS_PID, data in $WORK/kbs (bbolt), certificate $WORK/kbs/tls/cert.pem"

bold "Encrypt the image (ocicrypt); its key-encryption key goes into the KBS"
# Debian 12's skopeo cannot use an ocicrypt key provider; kbsctl image
# encrypt wraps the layer keys the same way (skopeo --encryption-key
# provider:attestation-agent:... with kbsctl keyprovider serve, elsewhere).
head -c 32 /dev/urandom >"$WORK/image.kek"
kbsctl resource set "$KEY_PATH" --file "$WORK/image.kek" | indent
"$BIN/kbsctl" image encrypt --insecure --key-id "kbs:///$KEY_PATH" --kek "$WORK/image.kek" \
	"$REGISTRY/demo/hello:plain" "$REGISTRY/demo/hello:encrypted" 2>&1 | indent
SECRET_IMAGE=$REGISTRY/demo/hello:encrypted

layer_types=$(crane manifest --insecure "$SECRET_IMAGE" | grep -o 'application/[^"]*layer[^"]*' | sort -u | tr '\n' ' ')
say "$SECRET_IMAGE: layer media type $layer_types"
[[ "$layer_types" == *encrypted* ]] || fail "kbsctl image encrypt did not encrypt the layer ($layer_types)"

bold "The workload's secrets: a value fetched at run time, a sealed one (fresh per run)"
random_value() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
RUNTIME_VALUE="runtime-$(random_value)"
SEALED_VALUE="sealed-$(random_value)"
printf '%s' "$RUNTIME_VALUE" | kbsctl resource set "$SECRET_RESOURCE" --file - | indent
printf '%s' "$SEALED_VALUE" | kbsctl resource set "$SEALED_RESOURCE" --file - | indent
"$BIN/kbsctl" secret keygen --out "$WORK/sealing.jwk" >"$WORK/sealing.pub.jwk" 2>/dev/null
kbsctl resource set "$SEALING_KEY" --file "$WORK/sealing.pub.jwk" | indent
SEALED_STRING=$("$BIN/kbsctl" secret seal "kbs:///$SEALED_RESOURCE" --signing-key "$WORK/sealing.jwk" --kid "kbs:///$SEALING_KEY")
say "the pod's env SEALED_VALUE is ${SEALED_STRING:0:40}... (kbsctl secret seal kbs:///$SEALED_RESOURCE)"

bold "Reference values and policy for the emulated SEV-SNP guest"
measurement=$(sed -n 's/.*"emulated": *"\([0-9a-f]*\)".*/\1/p' "$IMAGE_DIR/manifest.json" | head -1)
[ -n "$measurement" ] || fail "$IMAGE_DIR/manifest.json has no emulated launch measurement (rebuild with make image)"
# The launch measurement comes signed by the image's builder
# (reference-values.cose), not typed in.
"$BIN/cloak-image" sign --dir "$IMAGE_DIR" --sign-key "$WORK/builder.key" --out "$WORK/reference-values.cose" | indent
kbsctl reference-value import --file "$WORK/reference-values.cose" | indent
# The pod's initdata: the KBS and its certificate, and the agent policy
# generated from the pod's YAML (image digest, command, env, the probe's
# exec). Its digest is bound into the launch (HOST_DATA) and is a reference
# value too. The --allow-exec variant (debugging) has another digest, so
# this KBS releases nothing to it.
# The example pod, with the sealed env variable (its value differs per run,
# so it is added here rather than in the example).
POD_YAML=$WORK/confidential-pod.yaml
sed 's/^      command: \["\/app\/run.sh", "--stay"\]$/&\n      env:\n        - name: SEALED_VALUE\n          value: "'"$SEALED_STRING"'"/' docs/examples/confidential-pod.yaml >"$POD_YAML"
grep -q "name: SEALED_VALUE" "$POD_YAML" || fail "could not add the sealed env variable to docs/examples/confidential-pod.yaml's pod"
generate() { # generate DIR [FLAGS]: cloak generate the demo pod into DIR; prints its initdata digest
	local dir=$1
	shift
	mkdir -p "$dir"
	"$BIN/cloak" generate "$POD_YAML" --kbs-url "https://$GATEWAY:$KBS_PORT" --kbs-ca "$WORK/kbs/tls/cert.pem" \
		--insecure-registry "$REGISTRY" --crictl "$dir" -w "$dir/pod.yaml" "$@" 2>"$dir/generate.log" ||
		fail "cloak generate $POD_YAML: $(cat "$dir/generate.log")"
	sed -n 's/.*initdata sha384 \([0-9a-f]*\).*/\1/p' "$dir/generate.log" | head -1
}
init_data_digest=$(generate "$WORK/gen")
debug_digest=$(generate "$WORK/gen-debug" --allow-exec)
[ -n "$init_data_digest" ] && [ -n "$debug_digest" ] || fail "cloak generate printed no initdata digest"
say "cloak generate $POD_YAML:"
indent <"$WORK/gen/generate.log"
kbsctl reference-value set init_data "$init_data_digest" >/dev/null
# Demo and CI only: release keys to emulated guests every verifier affirms but
# for the hardware, which the KBS rates at most warning (32) for emulated evidence.
cp policy/examples/allow-emulated.rego "$WORK/allow-emulated.rego"
kbsctl resource-policy set --file "$WORK/allow-emulated.rego" | indent
kbsctl reference-value list | indent

# ---------------------------------------------------------------------------
bold "containerd v2 with runc, cloak and cloak-emulated, and the guest-pull snapshotter"
start_bg "$WORK/snapshotter.log" "$BIN/cloak-snapshotter" --address "$WORK/snap.sock" --root "$WORK/snapshotter"
wait_for 10 "the snapshotter socket" test -S "$WORK/snap.sock"
cat >"$WORK/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
cat >"$WORK/cni/10-cloak-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "cloak-e2e",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$WORK/ipam", "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "$GATEWAY"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
# cloak_config FILE TEE [EXTRA TOML]: a handler's configuration. The guest
# is on the pod network: it reaches the registry on the bridge's gateway.
cloak_config() {
	cat >"$1" <<EOF
image_dir = "${IMAGE_DIR_OVERRIDE:-$IMAGE_DIR}"
tee = "$2"
vcpus = 1
memory_mib = 512
run_dir = "$WORK/vm"
console_log_dir = "$WORK/console"
agent_timeout_seconds = 120
emulated_snp_dir = "$WORK/emulated-snp"
${3:-}
[registry]
insecure = ["$REGISTRY"]
mirrors = { "$REGISTRY" = "http://$GATEWAY:5000" }
EOF
}
cloak_config "$WORK/cloak.toml" none
# The emulated SEV-SNP platform reports the real SNP MEASUREMENT of this
# OVMF build (the one make image measured the image's reference values
# with), so the KBS matches the guest against the signed bundle's SNP
# values, as it would on a real SNP host. QEMU does not load it.
SNP_FIRMWARE=${OVMF_DIR:-$CACHE/ovmf-2026.08+ds-2}/OVMF.amdsev.fd
[ -f "$SNP_FIRMWARE" ] || fail "no SEV-SNP OVMF build at $SNP_FIRMWARE: run make vm-deps (or set OVMF_DIR)"
EMULATED="allowed_annotations = [\"initdata\"]
emulated_snp_firmware = \"$SNP_FIRMWARE\""
# The confidential handlers take the pod's own initdata (the annotation
# cloak generate wrote).
cloak_config "$WORK/cloak-emulated.toml" emulated "$EMULATED"
# Handlers for the refusals: a guest image whose kernel command line was
# changed (so its launch measurement is not the reference value), a pod
# initdata that is not the reference value, and a host that changes the
# initdata after launch.
mkdir -p "$WORK/image-changed"
ln -s "$IMAGE_DIR/vmlinuz" "$IMAGE_DIR/root.img" "$WORK/image-changed/"
# The top-level cmdline (two-space indent; debian's has four) ends the line
# with `",`; it holds escaped quotes (dm-mod.create="..."), so match greedily.
sed 's/^\(  "cmdline": ".*\)",$/\1 cloak.changed=1",/' "$IMAGE_DIR/manifest.json" >"$WORK/image-changed/manifest.json"
grep -q 'cloak.changed=1' "$WORK/image-changed/manifest.json" || fail "could not change the image's cmdline in $WORK/image-changed/manifest.json"
IMAGE_DIR_OVERRIDE=$WORK/image-changed cloak_config "$WORK/cloak-emulated-changed.toml" emulated "$EMULATED"
cloak_config "$WORK/cloak-emulated-attack.toml" emulated "$EMULATED
emulated_host_attack = \"initdata-after-launch\""

HANDLERS=(cloak cloak-emulated cloak-emulated-changed cloak-emulated-attack)
{
	cat <<EOF
version = 3
root = "$WORK/root"
state = "$WORK/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$WORK/c.sock"
[ttrpc]
  address = "$WORK/c.sock.ttrpc"
[proxy_plugins.cloak-snapshotter]
  type = "snapshot"
  address = "$WORK/snap.sock"
# Pulls for the cloak handlers go through cloak-snapshotter: the host
# stores manifests and configs, never a layer.
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "overlayfs"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "cloak-snapshotter"
[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$REGISTRY/pause:3.10"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$WORK/certs.d"
EOF
	for h in "${HANDLERS[@]}"; do
		printf '  [plugins."io.containerd.cri.v1.images".runtime_platforms.%s]\n    snapshotter = "cloak-snapshotter"\n' "$h"
	done
	cat <<EOF
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$WORK/cni"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$CTRD_DIR/runc"
EOF
	for h in "${HANDLERS[@]}"; do
		cat <<EOF
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.$h]
      runtime_type = "io.containerd.cloak.v2"
      snapshotter = "cloak-snapshotter"
      pod_annotations = ["io.cloak.*"]
      options = { ConfigPath = "$WORK/$h.toml" }
EOF
	done
} >"$WORK/config.toml"
printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 180\npull-image-on-create: true\n' "$WORK/c.sock" "$WORK/c.sock" >"$WORK/crictl.yaml"
PATH=$BIN:$CTRD_DIR:$PATH start_bg "$WORK/containerd.log" "$CTRD_DIR/containerd" --config "$WORK/config.toml" --log-level debug
CTRD_PID=$LAST_PID
wait_for 30 "containerd's CRI answering" crictl info
say "containerd pid $CTRD_PID, log $WORK/containerd.log"

# ---------------------------------------------------------------------------
# A pod and its container, as kubelet would send them.
pod_json() { # pod_json NAME HANDLER
	mkdir -p "$WORK/logs/$1"
	cat >"$WORK/pod-$1.json" <<EOF
{"metadata": {"name": "$1", "namespace": "cloak-demo", "uid": "$1-uid", "attempt": 0},
 "hostname": "$1", "log_directory": "$WORK/logs/$1",
 "annotations": {"io.containerd.cri.runtime-handler": "$2"}, "linux": {}}
EOF
	echo "$WORK/pod-$1.json"
}
ctr_json() { # ctr_json NAME IMAGE
	cat >"$WORK/ctr-$1.json" <<EOF
{"metadata": {"name": "app"}, "image": {"image": "$2"}, "log_path": "app.log", "linux": {}}
EOF
	echo "$WORK/ctr-$1.json"
}
# confidential_json NAME HANDLER [GENDIR]: the generated pod config (default
# $WORK/gen) for one run: the policy pins the pod's name, namespace and
# hostname, so runs differ by uid and handler only.
confidential_json() {
	mkdir -p "$WORK/logs/$1"
	sed -e "s|\"uid\": \"[^\"]*\"|\"uid\": \"$1-uid\"|" \
		-e "s|\"log_directory\": \"[^\"]*\"|\"log_directory\": \"$WORK/logs/$1\"|" \
		-e "s|\"io.containerd.cri.runtime-handler\": \"[^\"]*\"|\"io.containerd.cri.runtime-handler\": \"$2\"|" \
		"${3:-$WORK/gen}/pod.json" >"$WORK/pod-$1.json"
	echo "$WORK/pod-$1.json"
}
# run_confidential NAME HANDLER [GENDIR]: run_pod of the generated pod.
run_confidential() {
	start_pod "$2" "$(confidential_json "$1" "$2" "${3:-}")" "${3:-$WORK/gen}/container-app.json"
}
# run_pod NAME HANDLER IMAGE: runp, create, start of a pod without a
# policy (runc and cloak); sets POD and CID, and leaves crictl's stderr of
# the step that failed in $WORK/err.
run_pod() {
	start_pod "$2" "$(pod_json "$1" "$2")" "$(ctr_json "$1" "$3")"
}
start_pod() { # start_pod HANDLER POD_JSON CONTAINER_JSON
	local pod=$2 ctr=$3
	POD= CID=
	: >"$WORK/err"
	POD=$(crictl runp --runtime "$1" "$pod" 2>"$WORK/err") || return 1
	CID=$(crictl create "$POD" "$ctr" "$pod" 2>"$WORK/err") || return 1
	crictl start "$CID" >/dev/null 2>"$WORK/err" || return 1
}
remove_pod() {
	[ -n "${POD:-}" ] && crictl rmp -f "$POD" >/dev/null
	POD=
}
state_of() { crictl inspect -o go-template --template '{{.status.state}}' "$1" 2>/dev/null; }
printed() { crictl logs "$1" 2>/dev/null | grep -qxF "$SECRET_MESSAGE"; }
# HOST_DIRS: what the runtime writes on the host: containerd's root and
# state, the shim's run directory and log (in containerd's), the guest
# consoles.
HOST_DIRS="$WORK/root $WORK/state $WORK/vm $WORK/containerd.log $WORK/console"
exited() { state_of "$1" | grep -q EXITED; }
wait_exited() { wait_for 120 "container $1 exiting" exited "$1"; }
# audit_next: the newest audit entry's number (kbsctl audit --after it
# shows what came later).
audit_next() { kbsctl -o json audit --limit 1000 | sed -n 's/^  "next": *\([0-9]*\).*/\1/p'; }

if [ "$MODE" = bench ]; then
	RUNS=${BENCH_RUNS:-5}
	bold "Benchmark: $RUNS pod starts each (runp + create + start, image already pulled by CRI)"
	crictl pull "$REGISTRY/demo/hello:plain" >/dev/null
	: >"$WORK/bench.tsv"
	for h in runc cloak cloak-emulated; do
		img=$REGISTRY/demo/hello:plain
		[ "$h" = cloak-emulated ] && img=$SECRET_IMAGE
		# CRI pulls (for cloak: manifest and config only) before timing.
		if [ "$h" = cloak-emulated ]; then
			crictl pull --pod-config "$(confidential_json pull-$h "$h")" "$img" >/dev/null
		else
			crictl pull --pod-config "$(pod_json pull-$h "$h")" "$img" >/dev/null
		fi
		for i in $(seq "$RUNS"); do
			t0=$(date +%s%N)
			if [ "$h" = cloak-emulated ]; then
				run_confidential "bench-$h-$i" "$h" || fail "$h run $i: $(cat "$WORK/err")"
			else
				run_pod "bench-$h-$i" "$h" "$img" || fail "$h run $i: $(cat "$WORK/err")"
			fi
			t1=$(date +%s%N)
			# The confidential pod stays up: it is done once it printed.
			if [ "$h" = cloak-emulated ]; then wait_for 120 "pod $i printing" printed "$CID"; else wait_exited "$CID"; fi
			total=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
			printf '%s\ttotal\t%s\n' "$h" "$total" >>"$WORK/bench.tsv"
			if [ "$h" != runc ]; then
				kbsctl -o json audit --limit 1000 >"$WORK/audit.json"
				"$TIMELINE" show --log "$WORK/containerd.log" --audit "$WORK/audit.json" --container "$CID" --output tsv --label "$h" |
					grep -v "	total	" >>"$WORK/bench.tsv"
			fi
			remove_pod
			say "$h run $i: $total s"
		done
	done
	bold "Medians (seconds) of $RUNS runs; total is measured by this script around crictl runp/create/start"
	"$TIMELINE" median "$WORK/bench.tsv"
	# One line of the total medians, for tooling (docs/perf.md).
	line=""
	for h in runc cloak cloak-emulated; do
		m=$(awk -F'\t' -v h="$h" '$1 == h && $2 == "total" { print $3 }' "$WORK/bench.tsv" | sort -n |
			awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }') ||
			fail "no total times for $h in $WORK/bench.tsv"
		line+=" $h=$m"
	done
	echo
	echo "bench-e2e:$line"
	exit 0
fi

# ---------------------------------------------------------------------------
bold "Run the encrypted image as a pod of the $HANDLER handler (crictl runp, create, start)"
before=$(audit_next)
t0=$(date +%s%N)
run_confidential confidential "$HANDLER" || fail "the confidential pod did not start: $(cat "$WORK/err")"
say "crictl runp + create + start: $(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}') s"
wait_for 60 "the container printing the image's secret file" printed "$CID"
bold "The container's output (crictl logs)"
crictl logs "$CID" | tee "$WORK/out.txt" | sed 's/^/    | /'


bold "Pod start timeline (the shim's log line and the KBS audit, host clock)"
kbsctl -o json audit --limit 1000 >"$WORK/audit.json"
"$TIMELINE" show --log "$WORK/containerd.log" --audit "$WORK/audit.json" --container "$CID" | indent

bold "KBS audit of this pod's attestation and key release (kbsctl audit)"
kbsctl audit --after "$before" | indent
reported=$(kbsctl -o json audit --after "$before" | tr -d ' \n' |
	grep -o '"claim":"snp.measurement","group":"executables","value":"[0-9a-f]*"' | head -1 | sed 's/.*"value":"//; s/"$//')
if [ -z "$reported" ] || [ "$reported" = "$measurement" ] || ! grep -q "\"$reported\"" "$IMAGE_DIR/manifest.json"; then
	fail "the emulated SEV-SNP platform reported measurement '$reported', not one of the image's SNP MEASUREMENTs (emulated_snp_firmware $SNP_FIRMWARE)"
fi
say "ok: the emulated SEV-SNP platform reported the image's real SNP MEASUREMENT ${reported:0:16}... (EPYC-Milan, 1 vCPU), a signed reference value"

bold "The agent policy at work: the host may run the liveness probe, nothing else"
if crictl exec -s "$CID" cat /tmp/healthy >"$WORK/probe.out" 2>"$WORK/err"; then
	say "ok: crictl exec $CID cat /tmp/healthy (the pod's liveness probe) is allowed"
else
	fail "the liveness probe's exec was refused: $(cat "$WORK/err")"
fi
if crictl exec -s "$CID" sh -c 'cat /etc/recipe.txt' >"$WORK/exec.out" 2>"$WORK/err"; then
	fail "crictl exec sh ran in the confidential pod: $(cat "$WORK/exec.out")"
fi
grep -q "ExecProcess denied by the pod's agent policy" "$WORK/err" || fail "crictl exec sh failed, but not for the policy: $(cat "$WORK/err")"
! grep -qF "$SECRET_MESSAGE" "$WORK/exec.out" "$WORK/err" || fail "the refused exec printed the secret"
say "ok: crictl exec $CID sh -c 'cat /etc/recipe.txt' is refused:"
say "    $(grep -o "ExecProcess denied.*" "$WORK/err" | head -1)"

bold "The host never held the image's layers or plaintext"
encrypted_layers=$(crane manifest --insecure "$SECRET_IMAGE" | grep -o 'sha256:[0-9a-f]\{64\}' | sort -u)
plain_layers=$(crane manifest --insecure "$REGISTRY/demo/hello:plain" | grep -o 'sha256:[0-9a-f]\{64\}' | sort -u)
config_digest=$(crane config --insecure "$SECRET_IMAGE" | sha256sum | cut -d' ' -f1)
content=$("$CTRD_DIR/ctr" --address "$WORK/c.sock" -n k8s.io content ls -q 2>/dev/null)
held=0
for d in $encrypted_layers $plain_layers; do
	[ "sha256:$config_digest" = "$d" ] && continue
	grep -qxF "$d" <<<"$content" && {
		say "containerd's content store holds $d"
		held=1
	}
done
leaks=$(grep -rlF "$SECRET_MESSAGE" "$WORK/root" "$WORK/snapshotter" 2>/dev/null || true)
say "content store: $(wc -l <<<"$content") blobs (manifests, configs, the pause image); files with the plaintext under containerd's and the snapshotter's roots: ${leaks:-none}"
[ "$held" = 0 ] && [ -z "$leaks" ] || fail "the host holds a layer or the plaintext of the encrypted image"

bold "The workload's secrets reached the container, and only the container"
grep -qxF "fetched at run time from the in-guest API: $RUNTIME_VALUE" "$WORK/out.txt" ||
	fail "the container did not print the value of $SECRET_RESOURCE it fetched from http://127.0.0.1:8006 (see its output above)"
grep -qxF "from a sealed env variable: $SEALED_VALUE" "$WORK/out.txt" ||
	fail "the container did not print the unsealed value of $SEALED_RESOURCE (see its output above)"
say "ok: the container printed this run's values of $SECRET_RESOURCE (in-guest API) and $SEALED_RESOURCE (sealed env)"
# -D skip: containerd's FIFOs would block a read.
for v in "$RUNTIME_VALUE" "$SEALED_VALUE"; do
	# shellcheck disable=SC2086 # HOST_DIRS is a list
	found=$(grep -rlF -D skip -- "$v" $HOST_DIRS 2>/dev/null || true)
	[ -z "$found" ] || fail "a secret's plaintext is on the host, in: $found"
done
grep -rqF -D skip -- "${SEALED_STRING:0:60}" "$WORK/root" "$WORK/state" ||
	fail "the sealed string is not in containerd's records, so the check above proves nothing"
say "ok: neither plaintext is anywhere under HOST_DIRS ($HOST_DIRS); containerd holds only the sealed string"

if [ "$MODE" = up ]; then
	{
		printf '# make demo-up: the running confidential pod (make demo-down stops it)\n'
		printf 'CRICTL=%q\n' "nsenter --net=/run/netns/$CLOAK_E2E_NS $CRI_DIR/crictl --config $WORK/crictl.yaml"
		printf 'POD_ID=%q\nCONTAINER_ID=%q\n' "$POD" "$CID"
		printf 'POD_CONFIG=%q\nCONTAINER_CONFIG=%q\n' "$WORK/pod-confidential.json" "$WORK/gen/container-app.json"
		printf 'KBSCTL=%q\n' "nsenter --net=/run/netns/$CLOAK_E2E_NS $BIN/kbsctl --url https://127.0.0.1:$KBS_PORT --cacert $WORK/kbs/tls/cert.pem --admin-key $WORK/admin.key"
		printf 'SECRET_RESOURCE=%q\nSEALED_RESOURCE=%q\nHOST_DIRS=%q\n' "$SECRET_RESOURCE" "$SEALED_RESOURCE" "$HOST_DIRS"
	} >"$DEMO_DIR/env.tmp"
	echo $$ >"$DEMO_DIR/inner.pid"
	mv "$DEMO_DIR/env.tmp" "$DEMO_DIR/env"
	bold "Up: $DEMO_DIR/env describes the running pod; make demo-down stops it"
	trap 'exit 0' TERM INT
	while :; do sleep 1; done
fi

if [ "$MODE" = demo ]; then
	remove_pod
	bold "Done: the pod is removed; everything started here stops now"
	cat <<SUMMARY
    What ran where: a QEMU guest (TCG, Cloak's kernel, dm-verity root) for the pod of the $HANDLER handler,
      under containerd v2 in network namespace $CLOAK_E2E_NS, with a local registry and the KBS (bbolt).
    What was attested and released: the guest's emulated SEV-SNP report (the image's real SNP MEASUREMENT, a
      signed reference value; HOST_DATA = the initdata digest) was appraised by the KBS, which then released
      the image key $KEY_PATH to the guest's TEE key; the guest pulled and decrypted the image itself.
    What the host could not see: the image's layers and their plaintext (checked in containerd's and the
      snapshotter's stores), and a shell in the container: the agent policy refused crictl exec sh.
    The workload's own secrets: $SECRET_RESOURCE, which the container fetched from the in-guest API
      (127.0.0.1:8006, through the guest's attested session), and $SEALED_RESOURCE, which the guest unsealed
      from the pod's sealed env value before the process started; neither plaintext is on the host (HOST_DIRS).
    What emulated mode does not prove: the secure processor is simulated by the shim on this host, with keys
      on this host, and the host can read and change guest memory. Only cloak-snp / cloak-tdx on real
      hardware protect against the host (docs/threat-model.md).
    Look deeper: make demo-up (keeps the pod running; . .work/demo/env), make e2e (the refusals),
      kbsctl audit (the KBS's record of each attestation and release).
SUMMARY
	exit 0
fi


# ---------------------------------------------------------------------------
# The refusals. Each must fail the pod with a reason the user can act on,
# and the KBS audit must say which claim failed against which reference.
expect_refused() { # expect_refused WHAT PATTERN: the last run_pod failed, its stderr matches
	local what=$1 pattern=$2
	if grep -qE "$pattern" "$WORK/err"; then
		say "ok: $what: ...$(grep -oE ".{0,100}($pattern).{0,200}" "$WORK/err" | head -1)"
	else
		say "FAILED: $what: want an error matching /$pattern/, got: $(cat "$WORK/err")"
		FAILS=$((FAILS + 1))
	fi
}
no_container_ran() { # the container never started: CRI marks a failed start, and it printed nothing
	[ -z "$CID" ] && return 0
	[ "$(crictl inspect -o go-template --template '{{.status.reason}}' "$CID" 2>/dev/null)" = StartError ] &&
		[ -z "$(crictl logs "$CID" 2>/dev/null)" ]
}

# refused NAME HANDLER STEP PATTERN [GENDIR]: the confidential pod must fail
# at crictl STEP (runp or start) with an error matching PATTERN, and its
# container must never run.
refused() {
	local t0
	t0=$(date +%s)
	if run_confidential "$1" "$2" "${5:-}"; then
		say "FAILED: pod $1 started"
		FAILS=$((FAILS + 1))
	fi
	say "crictl $3 failed after $(($(date +%s) - t0)) s"
	expect_refused "crictl $3" "$4"
	check "the container never ran" no_container_ran
}
# audited FILE WHAT PATTERN...: the audit since $before, saved in FILE,
# shows each PATTERN.
audited() {
	local file=$WORK/$1 what=$2
	shift 2
	kbsctl audit --after "$before" | tee "$file" | sed 's/^/    | /'
	for p in "$@"; do check "the audit shows $what ($p)" grep -qF -- "$p" "$file"; done
}

bold "Refused: a container with another command in the confidential pod"
# kubelet's restart of the same container would be attempt 1 with the same
# spec; this one asks for a shell that prints the secret instead.
cat >"$WORK/ctr-other-command.json" <<EOF
{"metadata": {"name": "app", "attempt": 1}, "image": {"image": "$SECRET_IMAGE"},
 "command": ["/bin/sh", "-c", "cat /etc/recipe.txt"], "log_path": "app-other.log", "linux": {}}
EOF
# CRI creates the task, and so asks the guest, at start.
OTHER=$(crictl create "$POD" "$WORK/ctr-other-command.json" "$WORK/pod-confidential.json" 2>"$WORK/err") ||
	fail "crictl create of the other container: $(cat "$WORK/err")"
if crictl start "$OTHER" >/dev/null 2>"$WORK/err"; then
	say "FAILED: crictl start of another command succeeded"
	FAILS=$((FAILS + 1))
fi
expect_refused "crictl start" 'CreateContainer denied by the pod.s agent policy: .*command \["/bin/sh", "-c", "cat /etc/recipe.txt"\] is not the declared \["/app/run.sh", "--stay"\]'
check "the other container never ran" test -z "$(crictl logs "$OTHER" 2>/dev/null)"
check "the pod keeps running its container" test "$(state_of "$CID")" = CONTAINER_RUNNING
check "and its probe still runs" crictl exec -s "$CID" cat /tmp/healthy
check "the pod still runs one container" test "$(crictl ps -q --pod "$POD" | wc -l)" = 1
remove_pod

bold "Refused: the guest image changed (its launch measurement is not the reference value)"
before=$(audit_next)
refused changed cloak-emulated-changed start "not affirming"
# The bundle brings hundreds of accepted measurements (every vCPU count and
# CPU model): the audit names them by count and by bundle, not one by one.
audited audit-changed.txt "the failing claim and its reference value" snp.measurement \
	'values of reference value "snp_launch_measurement"'
names_bundle() { kbsctl -o json audit --after "$before" | grep -A3 '"reference_bundles"' | grep -q '"sha256:[0-9a-f]\{64\}"'; }
check "the audit names the signed bundle the measurement was compared with" names_bundle
remove_pod

bold "Refused: the pod's initdata is not the one the KBS expects (the --allow-exec debug policy: bound at launch, so the guest accepts it)"
before=$(audit_next)
refused other-initdata "$HANDLER" start "not affirming" "$WORK/gen-debug"
audited audit-initdata.txt "the failing claim and its reference value" init_data "$init_data_digest"
remove_pod

bold "Refused: the host changed the initdata after launch"
before=$(audit_next)
refused attack cloak-emulated-attack runp "initdata refused"
check "the guest refused before asking the KBS (no audit entry)" test "$(audit_next)" = "$before"
remove_pod

bold "Refused: the KBS's resource policy denies the key"
cat >"$WORK/deny.rego" <<'REGO'
package policy

import rego.v1

default allow := false

reasons contains "key release for this image is suspended by the security admin"
REGO
kbsctl resource-policy set --file "$WORK/deny.rego"
before=$(audit_next)
refused denied "$HANDLER" start "suspended by the security admin"
audited audit-deny.txt "the denial and its reason" "DENIED by the resource policy" "suspended by the security admin"
remove_pod
kbsctl resource-policy set --file "$WORK/allow-emulated.rego"

bold "Refused: the KBS hangs (accepts connections, never answers): retried, then a clear timeout"
kill -STOP "$KBS_PID"
refused kbs-frozen "$HANDLER" start "did not answer.*timed out after"
kill -CONT "$KBS_PID"
check "the error names the KBS's address" grep -q "$GATEWAY:$KBS_PORT" "$WORK/err"
remove_pod

bold "Refused: the KBS is down (connections refused): retried, then a clear error"
stop_pid "$KBS_PID"
refused kbs-down "$HANDLER" start "did not answer: [0-9]+ attempts"
check "the error names the KBS's address" grep -q "$GATEWAY:$KBS_PORT" "$WORK/err"
remove_pod

check "no QEMU outlived its pod" test -z "$(qemus)"
if [ "$FAILS" != 0 ]; then
	fail "$FAILS check(s) failed"
fi
bold "e2e: all checks passed"
