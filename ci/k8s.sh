#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, in a network namespace
# of its own: etcd, kube-apiserver and a kubelet (ci/k8s-deps.sh builds them
# once), the kubelet driving containerd v2 with the runc, cloak and
# cloak-emulated handlers and Cloak's guest-pull snapshotter, and a registry
# on loopback holding a busybox image the node pulls.
#
# Usage: ci/k8s.sh [up|down|e2e]
#   up    starts the cluster and returns; writes .work/k8s/env (KUBECTL, RUN,
#         IMAGE) and records each process's pid in .work/k8s/pids/
#   down  stops everything `up` started (by pid), removes its pods, mounts,
#         cgroups, network namespace and files
#   e2e   up, a runc pod Running with the output in `kubectl logs`, a pod of
#         the cloak-emulated RuntimeClass Running, down, and checks that
#         nothing is left
#
# Needs root (network namespace, cgroups, mounts) and `make build image`.
# No kube-scheduler (every pod here names its node in spec.nodeName) and no
# kube-controller-manager: `up` makes the two objects pods need from it, the
# default ServiceAccount and the kube-root-ca.crt ConfigMap.
#
# The kubelet sets the host's vm.overcommit_memory, kernel.panic and
# kernel.panic_on_oops (these are not per namespace); `up` saves their values
# and `down` restores them.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-up}
STATE=$PWD/.work/k8s # pids, env, logs: what `down` reads
NS=cloak-k8s
NODE=cloak-node
NODE_IP=10.89.0.1 # on node0 in $NS: the kubelet refuses a loopback node IP
GATEWAY=10.88.0.1 # the CNI bridge in $NS: the pods' gateway
SERVICE_CIDR=10.96.0.0/16
REGISTRY=127.0.0.1:5000
BIN=${BIN:-$PWD/bin}
IMAGE_DIR=${IMAGE_DIR:-$PWD/.work/image}
CACHE=${CLOAK_CACHE:-$HOME/.cache/cloak}
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
HOST_PATHS=(/var/lib/kubelet /var/log/containers) # device-plugins socket dir, legacy log links
# Stopped in reverse order; kubelet first, so nothing restarts a pod.
DAEMONS=(registry etcd kube-apiserver snapshotter containerd kubelet)

say() { printf 'k8s: %s\n' "$*"; }
fail() {
	echo "k8s: FAILED: $*" >&2
	exit 1
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
	local secs=$1 what=$2
	shift 2
	for _ in $(seq $((secs * 10))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	fail "$what did not happen within ${secs}s (logs in $STATE/logs)"
}
[ "$(id -u)" = 0 ] || fail "needs root (a network namespace, cgroups and mounts); run it with sudo"

# alive NAME: the pid recorded for NAME still runs the program it started.
alive() {
	local f=$STATE/pids/$1.pid pid exe
	[ -f "$f" ] || return 1
	pid=$(cat "$f")
	exe=$(cat "$STATE/pids/$1.exe" 2>/dev/null) || return 1
	[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ]
}
stop() { # stop NAME: SIGTERM, 30 s, then SIGKILL
	alive "$1" || return 0
	local pid
	pid=$(cat "$STATE/pids/$1.pid")
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 300); do
		alive "$1" || return 0
		sleep 0.1
	done
	echo "k8s: $1 (pid $pid) did not stop within 30 s; killing it" >&2
	kill -9 "$pid" 2>/dev/null || true
}

down() {
	set +e
	if [ ! -d "$STATE" ] && ! ip netns list | grep -qw "$NS"; then
		say "nothing is up (no $STATE)"
		return 0
	fi
	say "stopping the cluster: kubelet, pods, containerd, snapshotter, kube-apiserver, etcd, registry"
	local work=
	[ -f "$STATE/work" ] && work=$(cat "$STATE/work")
	stop kubelet
	# The pods' sandboxes and containers (and Cloak's VMs) go with their
	# shims, which outlive containerd: remove them through CRI first.
	if alive containerd && [ -x "${CRICTL_BIN:-}" ]; then
		local crictl=(nsenter "--net=/run/netns/$NS" "$CRICTL_BIN" --config "$work/crictl.yaml")
		for id in $("${crictl[@]}" pods -q 2>/dev/null); do "${crictl[@]}" rmp -f "$id" >/dev/null 2>&1; done
	fi
	for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop "${DAEMONS[i]}"; done
	# Anything still running in the namespace is ours (a shim whose pod
	# could not be removed).
	for pid in $(ip netns pids "$NS" 2>/dev/null); do
		echo "k8s: pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)) outlived the cluster; killing it" >&2
		kill -9 "$pid" 2>/dev/null
	done
	if [ -n "$work" ]; then
		awk -v d="$work" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r umount -l
		# The kubelet's legacy log links point into our pod log dir.
		find /var/log/containers -maxdepth 1 -lname "$work/*" -delete 2>/dev/null
	fi
	# The kubelet's cgroups (cgroupfs driver): `up` made sure none were
	# there before, so every one left is ours and empty now.
	for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null
	done
	ip netns del "$NS" 2>/dev/null
	if [ -f "$STATE/created" ]; then
		while read -r p; do rm -rf "$p"; done <"$STATE/created"
	fi
	if [ -f "$STATE/sysctl.saved" ]; then
		while read -r key value; do sysctl -qw "$key=$value"; done <"$STATE/sysctl.saved"
	fi
	[ -n "$work" ] && rm -rf "$work"
	rm -rf "$STATE"
	set -e
	say "down"
}

if [ "$MODE" = down ]; then
	CRICTL_BIN=$(CRITEST=0 ./ci/cri-deps.sh)/crictl
	down
	exit 0
fi
case "$MODE" in up | e2e) ;; *)
	echo "usage: $0 [up|down|e2e]" >&2
	exit 2
	;;
esac

# ---------------------------------------------------------------------------
# Refusals that must leave a running cluster alone (no `down` after them).
if [ -d "$STATE" ] || ip netns list | grep -qw "$NS"; then
	fail "a cluster is already up ($STATE, network namespace $NS): \`make k8s-down\` stops it"
fi
for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
	[ -d "$h" ] && fail "$h exists: another kubelet runs on this machine (or a crashed one left it; remove it with rmdir)"
done

up() {
	for f in "$BIN/containerd-shim-cloak-v2" "$BIN/cloak-snapshotter" "$IMAGE_DIR/manifest.json"; do
		[ -e "$f" ] || fail "$f is missing: run \`make build image\` first"
	done
	for tool in busybox openssl ip nsenter; do
		command -v "$tool" >/dev/null || fail "$tool is missing (\`make vm-deps\` installs busybox-static; openssl and iproute2 come with Debian)"
	done
	local t0
	t0=$(date +%s)
	K8S=$(./ci/k8s-deps.sh)
	CTRD_DIR=$(./ci/containerd-deps.sh)
	CRICTL_BIN=$(CRITEST=0 ./ci/cri-deps.sh)/crictl
	local crane_version
	crane_version=$(go list -m -f '{{.Version}}' github.com/google/go-containerregistry)
	CRANE=$CACHE/crane-$crane_version/crane
	if [ ! -x "$CRANE" ]; then
		say "building crane $crane_version (registry and image tool)"
		mkdir -p "$(dirname "$CRANE")"
		CGO_ENABLED=0 GOBIN="$(dirname "$CRANE")" go install "github.com/google/go-containerregistry/cmd/crane@$crane_version"
	fi

	mkdir -p "$STATE"/{pids,logs}
	# Short: containerd's and the snapshotter's socket paths stay under 108 bytes.
	WORK=$(mktemp -d /tmp/cloak-k8s.XXXXXX)
	echo "$WORK" >"$STATE/work"
	go build -o "$WORK/" ./ci/integration/testdata/cri/pause
	for key in "${SYSCTLS[@]}"; do echo "$key $(sysctl -n "$key")"; done >"$STATE/sysctl.saved"
	# Host paths the kubelet uses whatever its --root-dir: down removes the
	# ones that were not there before.
	for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$STATE/created"

	ip netns add "$NS"
	ip -n "$NS" link set lo up
	# (A veth pair, both ends here: these kernels have no dummy driver.)
	ip -n "$NS" link add node0 type veth peer name node0-peer
	ip -n "$NS" addr add "$NODE_IP/24" dev node0
	ip -n "$NS" link set node0-peer up
	ip -n "$NS" link set node0 up
	say "network namespace $NS: loopback, node address $NODE_IP (veth node0), pods on $GATEWAY/16"
	# The namespace has no default route: the kubelet picks its node address
	# from one, and all traffic here stays in the namespace anyway.
	ip -n "$NS" route add default dev node0

	# start NAME CMD...: run CMD in the namespace, detached, pid recorded.
	# (Only the network namespace: `ip netns exec` would also remount /sys,
	# hiding the cgroup mounts runc and the kubelet need.)
	start() {
		local name=$1
		shift
		setsid nsenter "--net=/run/netns/$NS" "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
		echo $! >"$STATE/pids/$name.pid"
		readlink -f "$1" >"$STATE/pids/$name.exe"
	}
	in_ns() { nsenter "--net=/run/netns/$NS" "$@"; }

	# --- registry, with busybox (every applet) and the pod sandbox image
	start registry "$CRANE" registry serve --address "0.0.0.0:5000"
	wait_for 10 "the registry answering" in_ns "$CRANE" catalog --insecure "$REGISTRY"
	mkdir -p "$WORK/busybox"/{bin,etc,tmp} "$WORK/pauseroot"
	cp "$(command -v busybox)" "$WORK/busybox/bin/busybox"
	for a in $(busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$WORK/busybox/bin/$a"; done
	echo 'root:x:0:0:root:/root:/bin/sh' >"$WORK/busybox/etc/passwd"
	echo 'root:x:0:' >"$WORK/busybox/etc/group"
	tar -C "$WORK/busybox" -cf "$WORK/busybox.tar" .
	cp "$WORK/pause" "$WORK/pauseroot/pause"
	tar -C "$WORK/pauseroot" -cf "$WORK/pause.tar" .
	crane() { in_ns "$CRANE" "$@" 2>>"$STATE/logs/crane.log" >/dev/null; }
	crane append --insecure --oci-empty-base -f "$WORK/busybox.tar" -t "$REGISTRY/busybox:base"
	crane mutate --insecure "$REGISTRY/busybox:base" --set-platform linux/amd64 --env PATH=/bin --cmd sh -t "$REGISTRY/busybox:1"
	crane append --insecure --oci-empty-base -f "$WORK/pause.tar" -t "$REGISTRY/pause:base"
	crane mutate --insecure "$REGISTRY/pause:base" --set-platform linux/amd64 --entrypoint /pause -t "$REGISTRY/pause:3.10"
	say "registry $REGISTRY: busybox:1 ($(busybox --list | wc -l) applets), pause:3.10"

	# --- certificates: a CA, the API server's serving certificate, client
	# certificates for the admin (kubectl), the kubelet and the API server's
	# calls to the kubelet; a key pair for service account tokens.
	local pki=$WORK/pki
	mkdir -p "$pki"
	openssl_quiet() { openssl "$@" 2>>"$STATE/logs/openssl.log"; }
	openssl_quiet req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj /CN=cloak-k8s-ca -keyout "$pki/ca.key" -out "$pki/ca.crt"
	cert() { # cert NAME SUBJECT [SAN]
		openssl_quiet req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
			-keyout "$pki/$1.key" -out "$pki/$1.csr"
		local ext=$pki/$1.ext
		printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n' >"$ext"
		if [ -n "${3:-}" ]; then
			printf 'extendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$3" >>"$ext"
		else
			printf 'extendedKeyUsage=clientAuth\n' >>"$ext"
		fi
		openssl_quiet x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
			-days 30 -extfile "$ext" -out "$pki/$1.crt"
	}
	cert apiserver /CN=kube-apiserver "IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert admin "/O=system:masters/CN=cloak-k8s-admin"
	cert kubelet "/O=system:nodes/CN=system:node:$NODE"
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
	openssl_quiet genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
	openssl_quiet pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
	kubeconfig() { # kubeconfig NAME: a kubeconfig with NAME's client certificate
		cat >"$WORK/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: cloak-k8s
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$pki/$1.crt", client-key: "$pki/$1.key"}
contexts:
- name: cloak-k8s
  context: {cluster: cloak-k8s, user: $1}
current-context: cloak-k8s
EOF
	}
	kubeconfig admin
	kubeconfig kubelet
	kubectl() { in_ns "$K8S/kubectl" --kubeconfig "$WORK/admin.kubeconfig" "$@"; }

	# --- etcd and the API server
	start etcd "$K8S/etcd" --name cloak-k8s --data-dir "$WORK/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster cloak-k8s=http://127.0.0.1:2380
	wait_for 30 "etcd answering" in_ns "$K8S/etcdctl" --endpoints http://127.0.0.1:2379 endpoint health
	say "etcd $("$K8S/etcd" --version | sed -n 's/^etcd Version: //p') on 127.0.0.1:2379"
	start kube-apiserver "$K8S/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
		--bind-address 0.0.0.0 --secure-port 6443 --advertise-address "$NODE_IP" \
		--tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
		--client-ca-file "$pki/ca.crt" --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types InternalIP \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
		--cert-dir "$WORK/apiserver-pki" --feature-gates RuntimeClassInImageCriApi=true
	wait_for 90 "kube-apiserver ready" kubectl get --raw /readyz
	say "kube-apiserver $(kubectl version -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | tail -1) on https://127.0.0.1:6443 and https://$NODE_IP:6443"
	# What kube-controller-manager would make and pods need: the namespace's
	# default ServiceAccount and the CA bundle every service account token
	# volume projects.
	wait_for 30 "the default namespace" kubectl get namespace default
	kubectl create serviceaccount default >/dev/null
	kubectl create configmap kube-root-ca.crt --from-file "ca.crt=$pki/ca.crt" >/dev/null

	# --- the guest-pull snapshotter and containerd
	start snapshotter "$BIN/cloak-snapshotter" --address "$WORK/snap.sock" --root "$WORK/snapshotter"
	wait_for 10 "the snapshotter socket" test -S "$WORK/snap.sock"
	mkdir -p "$WORK"/{cni,console,vm,emulated-snp,certs.d/$REGISTRY}
	cat >"$WORK/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
	cat >"$WORK/cni/10-cloak-k8s.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "cloak-k8s",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$WORK/ipam", "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "$GATEWAY"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
	# A handler's configuration; the guest reaches the registry on the
	# bridge's gateway.
	cloak_config() { # cloak_config HANDLER TEE [EXTRA TOML]
		cat >"$WORK/$1.toml" <<EOF
image_dir = "$IMAGE_DIR"
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
	cloak_config cloak none
	local firmware=${OVMF_DIR:-$CACHE/ovmf-2026.08+ds-2}/OVMF.amdsev.fd
	if [ -f "$firmware" ]; then
		cloak_config cloak-emulated emulated "allowed_annotations = [\"initdata\"]
emulated_snp_firmware = \"$firmware\""
	else
		say "no SEV-SNP OVMF build at $firmware (make vm-deps fetches it): cloak-emulated reports a zero firmware measurement"
		cloak_config cloak-emulated emulated 'allowed_annotations = ["initdata"]'
	fi
	local handlers=(cloak cloak-emulated)
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
		for h in "${handlers[@]}"; do
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
		for h in "${handlers[@]}"; do
			cat <<EOF
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.$h]
      runtime_type = "io.containerd.cloak.v2"
      snapshotter = "cloak-snapshotter"
      pod_annotations = ["io.cloak.*"]
      options = { ConfigPath = "$WORK/$h.toml" }
EOF
		done
	} >"$WORK/containerd.toml"
	PATH=$BIN:$CTRD_DIR:$PATH start containerd "$CTRD_DIR/containerd" --config "$WORK/containerd.toml"
	printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n' "$WORK/c.sock" "$WORK/c.sock" >"$WORK/crictl.yaml"
	local crictl=("$CRICTL_BIN" --config "$WORK/crictl.yaml")
	wait_for 30 "containerd's CRI answering" in_ns "${crictl[@]}" info
	say "containerd $("$CTRD_DIR/containerd" --version | awk '{print $3}') with handlers runc, ${handlers[*]}"

	# --- the kubelet
	cat >"$WORK/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$WORK/c.sock
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
# This machine kind boots with cgroup v1 (controllers on v1 hierarchies);
# kubelet 1.37 still runs on it when told to.
failCgroupV1: false
failSwapOn: false
# No CAP_SYS_RESOURCE here: a negative score cannot be set.
oomScoreAdj: 0
podLogsDir: $WORK/pod-logs
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%", nodefs.inodesFree: "2%"}
featureGates:
  RuntimeClassInImageCriApi: true
EOF
	start kubelet "$K8S/kubelet" --config "$WORK/kubelet.yaml" --kubeconfig "$WORK/kubelet.kubeconfig" \
		--root-dir "$WORK/kubelet" --cert-dir "$WORK/kubelet-pki" --hostname-override "$NODE" --node-ip "$NODE_IP" --v=2
	wait_for 120 "node $NODE Ready" kubectl wait --for condition=Ready --timeout 1s "node/$NODE"

	{
		printf '# make k8s-up: the cluster (make k8s-down stops it)\n'
		printf 'KUBECTL=%q\n' "nsenter --net=/run/netns/$NS $K8S/kubectl --kubeconfig $WORK/admin.kubeconfig"
		printf 'RUN=%q\n' "nsenter --net=/run/netns/$NS"
		printf 'IMAGE=%q\n' "$REGISTRY/busybox:1"
		printf 'NODE=%q\n' "$NODE"
		printf 'CRICTL=%q\n' "nsenter --net=/run/netns/$NS ${crictl[*]}"
	} >"$STATE/env.tmp"
	mv "$STATE/env.tmp" "$STATE/env"
	say "up in $(($(date +%s) - t0)) s: node $NODE Ready; . $STATE/env, then \$KUBECTL get nodes"
}

if [ "$MODE" = up ]; then
	# Its own subshell with -e (in a `||` list bash would ignore -e inside).
	set +e
	(
		set -e
		up
	)
	status=$?
	set -e
	if [ "$status" != 0 ]; then
		echo "k8s: up failed; its logs (tail):" >&2
		for d in "${DAEMONS[@]}"; do
			f=$STATE/logs/$d.log
			[ -s "$f" ] && { echo "---- $f" >&2; tail -15 "$f" >&2; }
		done
		CRICTL_BIN=$(CRITEST=0 ./ci/cri-deps.sh)/crictl down >&2
	fi
	exit "$status"
fi

# ---------------------------------------------------------------------------
# e2e: up, pods by kubectl, down, nothing left.
T0=$(date +%s)
CRICTL_BIN=$(CRITEST=0 ./ci/cri-deps.sh)/crictl
finish() {
	status=$?
	set +e
	if [ "$status" != 0 ] && [ -d "$STATE/logs" ]; then
		echo "k8s-e2e: logs (tail):" >&2
		for f in "$STATE"/logs/kubelet.log "$STATE"/logs/containerd.log; do
			[ -s "$f" ] && { echo "---- $f" >&2; tail -25 "$f" >&2; }
		done
	fi
	down
	exit "$status"
}
trap finish EXIT
set +e
(
	set -e
	up
)
[ $? = 0 ] || fail "the cluster did not come up"
set -e
# shellcheck source=/dev/null
. "$STATE/env"
kubectl() { $KUBECTL "$@"; }
kubectl get nodes -o wide | sed 's/^/    /'
pod_yaml() { # pod_yaml NAME RUNTIMECLASS COMMAND: a bare pod bound to the node
	cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeName: $NODE
  restartPolicy: Never
  terminationGracePeriodSeconds: 2 # sh as pid 1 ignores SIGTERM
$([ -n "$2" ] && echo "  runtimeClassName: $2")
  containers:
  - name: main
    image: $IMAGE
    command: ["sh", "-c", "$3"]
YAML
}
FAILS=0
check() {
	local what=$1
	shift
	if "$@"; then say "ok: $what"; else
		say "FAILED: $what"
		FAILS=$((FAILS + 1))
	fi
}
logs_say() { kubectl logs "$1" 2>/dev/null | grep -qxF "$2"; }

say "a runc pod (no RuntimeClass)"
t=$(date +%s%N)
pod_yaml plain "" 'echo hello from $(hostname) on runc; sleep 3600' | kubectl apply -f - >/dev/null
kubectl wait --for condition=Ready --timeout 120s pod/plain >/dev/null || fail "pod/plain not Ready: $(kubectl describe pod plain | tail -15)"
say "pod/plain Ready $(awk -v a="$t" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}') s after kubectl apply"
kubectl get pod plain -o wide | sed 's/^/    /'
check "kubectl logs shows the container's output" logs_say plain "hello from plain on runc"
check "the pod got an address on the pod network" test -n "$(kubectl get pod plain -o jsonpath='{.status.podIP}')"
check "kubectl delete removes it" kubectl delete pod plain --timeout 60s
check "and its sandbox is stopped in containerd" test -z "$($CRICTL pods -q --name plain --state ready)"

runtime_class() { # runtime_class HANDLER: the RuntimeClass make install documents (docs/kubernetes.md)
	kubectl apply -f - >/dev/null <<YAML
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: $1}
handler: $1
overhead:
  podFixed: {memory: 640Mi, cpu: 250m}
YAML
}
# vm_pod NAME CLASS FILE: apply the pod in FILE, wait for it Ready, check its
# output and delete it.
vm_pod() {
	local t
	t=$(date +%s%N)
	kubectl apply -f "$3" >/dev/null || fail "kubectl apply -f $3"
	if kubectl wait --for condition=Ready --timeout 300s "pod/$1" >/dev/null; then
		say "pod/$1 ($2) Ready $(awk -v a="$t" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}') s after kubectl apply"
		kubectl get pod "$1" -o wide | sed 's/^/    /'
		check "kubectl logs shows the guest's output" sh -c "$KUBECTL logs $1 | grep -q 'in a Cloak VM'"
		kubectl logs "$1" | sed 's/^/    | /'
		check "kubectl delete removes it" kubectl delete pod "$1" --timeout 120s
	else
		say "FAILED: pod/$1 ($2) not Ready:"
		kubectl describe pod "$1" | tail -15 | sed 's/^/    /'
		FAILS=$((FAILS + 1))
		kubectl delete pod "$1" --timeout 120s >/dev/null 2>&1
	fi
}
E2E_DIR=$(mktemp -d /tmp/cloak-k8s-e2e.XXXXXX)
vm_cmd='echo hello from $(uname -r) in a Cloak VM; sleep 3600'
if [ "${K8S_E2E_CLOAK:-1}" != 0 ]; then
	say "a pod of the cloak RuntimeClass (a QEMU guest under TCG; the guest pulls the image)"
	runtime_class cloak
	pod_yaml vm cloak "$vm_cmd" >"$E2E_DIR/vm.yaml"
	vm_pod vm cloak "$E2E_DIR/vm.yaml"

	say "a pod of the cloak-emulated RuntimeClass, its initdata and agent policy from cloak generate"
	runtime_class cloak-emulated
	pod_yaml confidential cloak-emulated "$vm_cmd" >"$E2E_DIR/confidential.yaml"
	# The KBS address is where the guest would ask for secrets; this pod
	# needs none (a plain image, no sealed secret).
	$RUN "$BIN/cloak" generate --kbs-url "https://10.88.0.1:8443" --insecure-registry "${IMAGE%%/*}" \
		-w "$E2E_DIR/confidential.cloak.yaml" "$E2E_DIR/confidential.yaml" 2>&1 | sed 's/^/    /'
	vm_pod confidential cloak-emulated "$E2E_DIR/confidential.cloak.yaml"
fi
rm -rf "$E2E_DIR"

trap - EXIT
work=$(cat "$STATE/work")
created=$(cat "$STATE/created")
down
say "checks after down"
check "no process of the cluster is left" test -z "$(pgrep -f -- "$work" || true)"
check "the network namespace is gone" sh -c "! ip netns list | grep -qw $NS"
check "no mount is left" sh -c "! grep -qF '$work' /proc/self/mountinfo"
check "no kubelet cgroup is left" sh -c "! ls -d /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods 2>/dev/null | grep -q ."
check "its files are gone" test ! -e "$STATE" -a ! -e "$work"
for p in "${HOST_PATHS[@]}"; do
	grep -qxF "$p" <<<"$created" && check "$p (made by the kubelet) is gone" test ! -e "$p"
done
[ "$FAILS" = 0 ] || fail "$FAILS check(s) failed"
say "e2e: all checks passed in $(($(date +%s) - T0)) s"
