#!/usr/bin/env bash
# A confidential pod end to end, on this machine, with real parts only: a
# registry on loopback, an image encrypted with ocicrypt (kbsctl image
# encrypt), the KBS (embedded bbolt storage) holding its key,
# containerd v2 with the cloak handlers and the guest-pull snapshotter, and
# crictl running the encrypted image as a pod of the cloak-emulated handler:
# a QEMU guest with an emulated SEV-SNP platform that attests to the KBS, gets
# the key, pulls and decrypts the image itself.
#
# Usage: ci/e2e.sh [demo|test|bench]
#   demo   the happy path: the container's output and its start timeline
#   test   demo, then checks that the host holds no plaintext, and the refusals:
#          guest image changed, another initdata, initdata changed after
#          launch, policy deny, KBS frozen, KBS down
#   bench  5 pod starts each with runc, cloak and cloak-emulated, medians
#          (BENCH_RUNS=N to change)
#
# Needs root (network namespace, TAP devices, QEMU) and `make build image`.
# Everything runs in a network namespace of its own, so its fixed ports
# (registry 5000, KBS 8443) never meet the host's; everything it starts is
# stopped, and its files removed, when it ends (KEEP=1 keeps the files).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-demo}
case "$MODE" in demo | test | bench) ;; *)
	echo "usage: $0 [demo|test|bench]" >&2
	exit 2
	;;
esac
BIN=${BIN:-$PWD/bin}
IMAGE_DIR=${IMAGE_DIR:-$PWD/.work/image}
CACHE=${CLOAK_CACHE:-$HOME/.cache/cloak}
GATEWAY=10.88.0.1 # the CNI bridge in our namespace: the pods' gateway
REGISTRY=127.0.0.1:5000
KBS_PORT=8443
KEY_PATH=default/image-key/demo
HANDLER=cloak-emulated

bold() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
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
	CRI_DIR=$(./ci/cri-deps.sh)
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
	CLOAK_E2E_NS=$NS TOOLS=$TOOLS CTRD_DIR=$CTRD_DIR CRI_DIR=$CRI_DIR CRANE=$CRANE BIN=$BIN IMAGE_DIR=$IMAGE_DIR \
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
mkdir -p "$WORK/rootfs"/{bin,app,etc}
cp "$(command -v busybox)" "$WORK/rootfs/bin/busybox"
for a in sh cat uname; do ln -s busybox "$WORK/rootfs/bin/$a"; done
printf '%s\n' "$SECRET_MESSAGE" >"$WORK/rootfs/etc/recipe.txt"
cat >"$WORK/rootfs/app/run.sh" <<'EOF'
#!/bin/sh
echo "hello from a confidential pod (guest kernel $(uname -r))"
cat /etc/recipe.txt
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
# The shim creates the same chain in emulated_snp_dir on first use; the KBS
# must trust it (a test root: never give it to a KBS guarding real secrets).
"$BIN/cloak-image" emulated-root --dir "$WORK/emulated-snp" >"$WORK/emulated-root.pem"
mkdir -p "$WORK/collateral" # empty: the KBS fetches nothing from AMD
start_bg "$WORK/kbs.log" "$BIN/kbs" --listen "0.0.0.0:$KBS_PORT" --data-dir "$WORK/kbs" \
	--admin-public-key "$WORK/admin.pub" --tls-san "$GATEWAY" --tls-san 127.0.0.1 \
	--snp-extra-root "$WORK/emulated-root.pem" --snp-crl if-available \
	--collateral-offline --collateral-dir "$WORK/collateral"
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

bold "Reference values and policy for the emulated SEV-SNP guest"
measurement=$(sed -n 's/.*"emulated": *"\([0-9a-f]*\)".*/\1/p' "$IMAGE_DIR/manifest.json" | head -1)
[ -n "$measurement" ] || fail "$IMAGE_DIR/manifest.json has no emulated launch measurement (rebuild with make image)"
kbsctl reference-value set snp_launch_measurement "$measurement" >/dev/null
# The pod's initdata names the KBS and its certificate; its digest is bound
# into the launch (HOST_DATA) and is a reference value too.
{
	printf 'version = "0.1.0"\nalgorithm = "sha384"\n\n[data]\n"aa.toml" = %s\n' "'''"
	printf '[token_configs.kbs]\nurl = "https://%s:%s"\ncert = """\n' "$GATEWAY" "$KBS_PORT"
	cat "$WORK/kbs/tls/cert.pem"
	printf '"""\n%s\n' "'''"
} >"$WORK/initdata.toml"
init_data_digest=$(sha384sum "$WORK/initdata.toml" | cut -d' ' -f1)
kbsctl reference-value set init_data "$init_data_digest" >/dev/null
# Demo and CI only: release keys to emulated guests every verifier affirms.
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
cloak_config "$WORK/cloak-emulated.toml" emulated "[kbs]
initdata_file = \"$WORK/initdata.toml\""
# Handlers for the refusals: a guest image whose kernel command line was
# changed (so its launch measurement is not the reference value), a pod
# initdata that is not the reference value, and a host that changes the
# initdata after launch.
mkdir -p "$WORK/image-changed"
ln -s "$IMAGE_DIR/vmlinuz" "$IMAGE_DIR/initrd.img" "$WORK/image-changed/"
sed 's/"cmdline": "\([^"]*\)"/"cmdline": "\1 cloak.changed=1"/' "$IMAGE_DIR/manifest.json" >"$WORK/image-changed/manifest.json"
IMAGE_DIR_OVERRIDE=$WORK/image-changed cloak_config "$WORK/cloak-emulated-changed.toml" emulated "[kbs]
initdata_file = \"$WORK/initdata.toml\""
{
	cat "$WORK/initdata.toml"
	echo "# another initdata: not the reference value"
} >"$WORK/initdata-other.toml"
cloak_config "$WORK/cloak-emulated-initdata.toml" emulated "[kbs]
initdata_file = \"$WORK/initdata-other.toml\""
cloak_config "$WORK/cloak-emulated-attack.toml" emulated "emulated_host_attack = \"initdata-after-launch\"
[kbs]
initdata_file = \"$WORK/initdata.toml\""

HANDLERS=(cloak cloak-emulated cloak-emulated-changed cloak-emulated-initdata cloak-emulated-attack)
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
# run_pod NAME HANDLER IMAGE: runp, create, start; sets POD and CID, and
# leaves crictl's stderr of the step that failed in $WORK/err.
run_pod() {
	local pod ctr
	pod=$(pod_json "$1" "$2")
	ctr=$(ctr_json "$1" "$3")
	POD= CID=
	: >"$WORK/err"
	POD=$(crictl runp --runtime "$2" "$pod" 2>"$WORK/err") || return 1
	CID=$(crictl create "$POD" "$ctr" "$pod" 2>"$WORK/err") || return 1
	crictl start "$CID" >/dev/null 2>"$WORK/err" || return 1
}
remove_pod() {
	[ -n "${POD:-}" ] && crictl rmp -f "$POD" >/dev/null
	POD=
}
state_of() { crictl inspect -o go-template --template '{{.status.state}}' "$1" 2>/dev/null; }
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
		crictl pull --pod-config "$(pod_json pull-$h "$h")" "$img" >/dev/null
		for i in $(seq "$RUNS"); do
			t0=$(date +%s%N)
			run_pod "bench-$h-$i" "$h" "$img" || fail "$h run $i: $(cat "$WORK/err")"
			t1=$(date +%s%N)
			wait_exited "$CID"
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
	exit 0
fi

# ---------------------------------------------------------------------------
bold "Run the encrypted image as a pod of the $HANDLER handler (crictl runp, create, start)"
before=$(audit_next)
t0=$(date +%s%N)
run_pod confidential "$HANDLER" "$SECRET_IMAGE" || fail "the confidential pod did not start: $(cat "$WORK/err")"
say "crictl runp + create + start: $(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}') s"
wait_exited "$CID"
bold "The container's output (crictl logs)"
crictl logs "$CID" | tee "$WORK/out.txt" | sed 's/^/    | /'
grep -qxF "$SECRET_MESSAGE" "$WORK/out.txt" || fail "the container did not print the image's secret file"

bold "Pod start timeline (the shim's log line and the KBS audit, host clock)"
kbsctl -o json audit --limit 1000 >"$WORK/audit.json"
"$TIMELINE" show --log "$WORK/containerd.log" --audit "$WORK/audit.json" --container "$CID" | indent

bold "KBS audit of this pod's attestation and key release (kbsctl audit)"
kbsctl audit --after "$before" | indent

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
remove_pod

if [ "$MODE" = demo ]; then
	bold "Done: the pod is removed; everything started here stops now"
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

# refused NAME HANDLER STEP PATTERN: a pod of the secret image must fail
# at crictl STEP (runp or start) with an error matching PATTERN, and its
# container must never run.
refused() {
	local t0
	t0=$(date +%s)
	if run_pod "$1" "$2" "$SECRET_IMAGE"; then
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

bold "Refused: the guest image changed (its launch measurement is not the reference value)"
before=$(audit_next)
refused changed cloak-emulated-changed start "not affirming"
audited audit-changed.txt "the failing claim and its reference value" snp.measurement "$measurement"
remove_pod

bold "Refused: the pod's initdata is not the one the KBS expects (bound at launch, so the guest accepts it)"
before=$(audit_next)
refused other-initdata cloak-emulated-initdata start "not affirming"
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
