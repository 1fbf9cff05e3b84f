# Cloak's agent policy rules. The guest agent evaluates them on every request
# the (untrusted) host makes, before it acts. One rule per agentapi request
# message, named after it, as Kata's genpolicy rules are: true allows the
# request. When a rule is false, reasons[<message>] says why.
#
# input is the request as protojson with the proto's field names; oci_spec
# and process (JSON bytes on the wire) are parsed objects, ContainerFile.data
# is replaced by its size, CreateSandbox's initdata by its size. input.guest
# holds what the guest itself knows (never host input): the digest of the
# image it pulled for a reference, and the container a request names.
#
# policy_data (appended by `cloak generate`, schema: agentpolicy.Data) pins
# the pod.
package agent_policy

import rego.v1

# ---------------------------------------------------------------------------
# Requests that reveal or change nothing a confidential pod keeps from the
# host: the host owns the VM's lifetime and resources anyway.

default CheckRequest := true

default VersionRequest := true

default GuestStatsRequest := true

default DestroySandboxRequest := true

default StartContainerRequest := true

default RemoveContainerRequest := true

default UpdateContainerRequest := true

default StatsContainerRequest := true

default ListProcessesRequest := true

default SignalProcessRequest := true

default WaitProcessRequest := true

default CloseStdinRequest := true

default ResizePtyRequest := true

default OOMEventsRequest := true

# Pulling is allowed: what matters is the digest a container runs, which
# CreateContainerRequest checks against the digest the guest itself pulled.
default PullImageRequest := true

# ---------------------------------------------------------------------------
# The REST API the guest serves the pod's containers on 127.0.0.1:8006
# (guest-image/cdh), as Kata's agent option guest_components_rest_api:
# "resource" (CoCo's default: GET /cdh/resource/...), "attestation" (GET
# /aa/token), "all" or "none". Not a host request: the guest reads it once,
# when the sandbox is created.

default guest_components_rest_api := "resource"

guest_components_rest_api := object.get(policy_data, "guest_components_rest_api", "resource")

# ---------------------------------------------------------------------------
# CreateSandboxRequest: the pod's hostname, sysctls and network.

default CreateSandboxRequest := false

CreateSandboxRequest if count(reasons.CreateSandboxRequest) == 0

reasons.CreateSandboxRequest contains msg if {
	not regex.match(policy_data.sandbox.hostname, object.get(input, "hostname", ""))
	msg := sprintf("hostname %q is not the pod's (%s)", [object.get(input, "hostname", ""), policy_data.sandbox.hostname])
}

# containerd's CRI sets these for every pod unless the pod sets them itself
# (enable_unprivileged_ports, enable_unprivileged_icmp).
containerd_sysctls := {"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"}

reasons.CreateSandboxRequest contains msg if {
	some k, v in object.get(input, "sysctls", {})
	not sandbox_sysctl_ok(k, v)
	msg := sprintf("sysctl %s=%q is not the pod's", [k, v])
}

reasons.CreateSandboxRequest contains msg if {
	some k, v in object.get(policy_data.sandbox, "sysctls", {})
	object.get(object.get(input, "sysctls", {}), k, null) != v
	msg := sprintf("the pod's sysctl %s=%q is missing", [k, v])
}

sandbox_sysctl_ok(k, v) if policy_data.sandbox.sysctls[k] == v

sandbox_sysctl_ok(k, v) if {
	not policy_data.sandbox.sysctls[k]
	containerd_sysctls[k] == v
}

reasons.CreateSandboxRequest contains msg if {
	object.get(input, "shared_fs_tag", "") != ""
	msg := "a confidential pod mounts no host directory (shared_fs_tag is set)"
}

reasons.CreateSandboxRequest contains msg if {
	some iface in object.get(input, "interfaces", [])
	iface.name == "lo"
	msg := "the network configuration may not touch the loopback interface lo"
}

reasons.CreateSandboxRequest contains msg if {
	some iface in object.get(input, "interfaces", [])
	some addr in object.get(iface, "addresses", [])
	loopback_cidr(addr)
	msg := sprintf("interface %q: address %s is a loopback address", [iface.name, addr])
}

reasons.CreateSandboxRequest contains msg if {
	some route in object.get(input, "routes", [])
	loopback_route(route)
	msg := sprintf("route %v touches the loopback interface or 127.0.0.0/8", [route])
}

loopback_route(route) if object.get(route, "device", "") == "lo"

loopback_route(route) if {
	dst := object.get(route, "destination", "")
	dst != "default"
	dst != ""
	loopback_cidr(dst)
}

loopback_route(route) if {
	gw := object.get(route, "gateway", "")
	gw != ""
	loopback_cidr(gw)
}

loopback_cidr(s) if net.cidr_intersects("127.0.0.0/8", cidr_of(s))

loopback_cidr(s) if net.cidr_intersects("::1/128", cidr_of(s))

cidr_of(s) := s if contains(s, "/")

cidr_of(s) := concat("", [s, "/32"]) if {
	not contains(s, "/")
	not contains(s, ":")
}

cidr_of(s) := concat("", [s, "/128"]) if {
	not contains(s, "/")
	contains(s, ":")
}

# ---------------------------------------------------------------------------
# CreateContainerRequest: everything the container runs is what the pod
# declared.

default CreateContainerRequest := false

CreateContainerRequest if count(reasons.CreateContainerRequest) == 0

spec := object.get(input, "oci_spec", {})

annotations := object.get(spec, "annotations", {})

process := object.get(spec, "process", {})

create_name := object.get(annotations, "io.kubernetes.cri.container-name", "")

# The pinned container the request names (undefined when none).
create_container := c if {
	some c in policy_data.containers
	c.name == create_name
}

reasons.CreateContainerRequest contains msg if {
	not create_container
	msg := sprintf("container %q is not in the pod's policy (declared: %v)", [create_name, [c.name | some c in policy_data.containers]])
}

reasons.CreateContainerRequest contains msg if {
	object.get(annotations, "io.kubernetes.cri.container-type", "") != "container"
	msg := sprintf("container type %q: only containers of the pod may be created", [object.get(annotations, "io.kubernetes.cri.container-type", "")])
}

reasons.CreateContainerRequest contains msg if {
	name := object.get(annotations, "io.kubernetes.cri.sandbox-name", "")
	not regex.match(policy_data.sandbox.name, name)
	msg := sprintf("pod name %q is not the pod's (%s)", [name, policy_data.sandbox.name])
}

reasons.CreateContainerRequest contains msg if {
	ns := object.get(annotations, "io.kubernetes.cri.sandbox-namespace", "")
	ns != policy_data.sandbox.namespace
	msg := sprintf("pod namespace %q is not the pod's %q", [ns, policy_data.sandbox.namespace])
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	got := object.get(input.guest, "image_digest", "")
	got != c.image_digest
	msg := sprintf("image %q has manifest digest %q in this guest; the policy pins %s at %s", [input.image, got, c.image, c.image_digest])
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	object.get(process, "args", []) != c.args
	msg := sprintf("command %v is not the declared %v", [object.get(process, "args", []), c.args])
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	some e in env_unexpected(object.get(process, "env", []), c)
	msg := sprintf("environment variable %s is not declared", [env_name(e)])
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	some e in env_missing(object.get(process, "env", []), c)
	msg := sprintf("declared environment variable %s is missing or changed", [env_name(e)])
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	object.get(process, "cwd", "") != c.working_dir
	msg := sprintf("working directory %q is not the declared %q", [object.get(process, "cwd", ""), c.working_dir])
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	some m in user_mismatch(object.get(process, "user", {}), c.uid, c.gid, c.additional_gids)
	msg := m
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	some m in caps_extra(object.get(process, "capabilities", {}), c.capabilities)
	msg := m
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	c.no_new_privileges
	not process.noNewPrivileges
	msg := "noNewPrivileges is declared but not set"
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	object.get(process, "terminal", false) != c.tty
	msg := sprintf("terminal %v is not the declared tty %v", [object.get(process, "terminal", false), c.tty])
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	c.readonly_rootfs
	not spec.root.readonly
	msg := "the root filesystem is declared read-only but requested writable"
}

reasons.CreateContainerRequest contains msg if {
	some kind, hooks in object.get(spec, "hooks", {})
	count(hooks) > 0
	msg := sprintf("OCI hooks (%s) run code outside the container: refused", [kind])
}

linux := object.get(spec, "linux", {})

reasons.CreateContainerRequest contains msg if {
	count(object.get(linux, "devices", [])) > 0
	msg := "device nodes are not declared"
}

reasons.CreateContainerRequest contains msg if {
	some r in object.get(object.get(linux, "resources", {}), "devices", [])
	r.allow
	msg := sprintf("device cgroup rule %v allows a device", [r])
}

reasons.CreateContainerRequest contains msg if {
	some ns in object.get(linux, "namespaces", [])
	object.get(ns, "path", "") != ""
	msg := sprintf("joining the %s namespace at %q is refused", [ns.type, ns.path])
}

reasons.CreateContainerRequest contains msg if {
	some ns in ["pid", "ipc", "uts", "mount"]
	not namespace_of(ns)
	msg := sprintf("the container must have its own %s namespace", [ns])
}

namespace_of(t) if {
	some ns in object.get(linux, "namespaces", [])
	ns.type == t
}

# kubelet's default masked and read-only /proc and /sys paths
# (k8s.io/kubernetes pkg/securitycontext): a container without them can read
# the guest kernel's keys and memory or write its settings.
default_masked_paths := {
	"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
	"/sys/devices/virtual/powercap",
}

default_readonly_paths := {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}

reasons.CreateContainerRequest contains msg if {
	missing := default_masked_paths - {p | some p in object.get(linux, "maskedPaths", [])}
	count(missing) > 0
	msg := sprintf("paths %v must stay masked", [sort(missing)])
}

reasons.CreateContainerRequest contains msg if {
	missing := default_readonly_paths - {p | some p in object.get(linux, "readonlyPaths", [])}
	count(missing) > 0
	msg := sprintf("paths %v must stay read-only", [sort(missing)])
}

reasons.CreateContainerRequest contains msg if {
	c := create_container
	got := object.get(linux, "sysctl", {})
	want := object.get(c, "sysctls", {})
	got != want
	msg := sprintf("sysctls %v are not the declared %v", [got, want])
}

# Mounts: every mount is one every container gets, with its expected type,
# or a declared volume; nothing is shared from the host.

mounts := object.get(spec, "mounts", [])

# The sources the host asks for, by mount index.
mount_source := {ms.mount_index: ms | some ms in object.get(input, "mount_sources", [])}

# The mounts every container gets, with what may back each: a kernel
# filesystem, files copied into the guest, or the pod's /dev/shm.
standard_mounts := {
	"/proc": {"proc"},
	"/dev": {"tmpfs"},
	"/dev/pts": {"devpts"},
	"/dev/mqueue": {"mqueue"},
	"/sys": {"sysfs"},
	"/sys/fs/cgroup": {"cgroup", "cgroup2"},
	"/etc/hostname": {"files"},
	"/etc/hosts": {"files"},
	"/etc/resolv.conf": {"files"},
	"/dev/termination-log": {"files"},
	"/dev/shm": {"shm", "tmpfs"},
}

# source_kind is what backs mount i: its type for kernel filesystems,
# files/shm/emptyDir/shared for the bind sources of mount_sources.
source_kind(i, m) := "files" if mount_source[i].files

source_kind(i, m) := "shm" if mount_source[i].guest_dir.kind == "KIND_SHM"

source_kind(i, m) := "emptyDir" if mount_source[i].guest_dir.kind == "KIND_EMPTY_DIR"

source_kind(i, m) := "shared" if mount_source[i].shared

source_kind(i, m) := object.get(m, "type", "") if not mount_source[i]

volume_kinds := {
	"configMap": "files", "secret": "files", "projected": "files", "downwardAPI": "files",
	"serviceAccountToken": "files", "emptyDir": "emptyDir",
}

mount_readonly(m) if "ro" in object.get(m, "options", [])

# Computed once per request: what backs each mount, and the declared volumes
# by destination.
mount_kinds := {i: source_kind(i, m) | some i, m in mounts}

declared_mounts := {d.destination: d | some d in create_container.mounts}

reasons.CreateContainerRequest contains msg if {
	create_container
	some m in mounts
	not standard_mounts[m.destination]
	not declared_mounts[m.destination]
	msg := sprintf("mount at %s is not declared", [m.destination])
}

reasons.CreateContainerRequest contains msg if {
	some i, m in mounts
	want := standard_mounts[m.destination]
	got := mount_kinds[i]
	not got in want
	msg := sprintf("mount at %s is %s, want %s", [m.destination, got, concat(" or ", sort(want))])
}

reasons.CreateContainerRequest contains msg if {
	some m in mounts
	m.destination in {"/sys", "/sys/fs/cgroup"}
	not mount_readonly(m)
	msg := sprintf("mount at %s must be read-only", [m.destination])
}

reasons.CreateContainerRequest contains msg if {
	some i, m in mounts
	d := declared_mounts[m.destination]
	got := mount_kinds[i]
	got != volume_kinds[d.kind]
	msg := sprintf("volume at %s (%s) is backed by %s", [m.destination, d.kind, got])
}

reasons.CreateContainerRequest contains msg if {
	some m in mounts
	d := declared_mounts[m.destination]
	d.readonly
	not mount_readonly(m)
	msg := sprintf("volume at %s is declared read-only but requested writable", [m.destination])
}


# Files copied into the guest land only where a mount takes them.
reasons.CreateContainerRequest contains msg if {
	roots := {root_of(ms.files) | some ms in object.get(input, "mount_sources", []); ms.files}
	some f in object.get(input, "files", [])
	not root_of(f.path) in roots
	msg := sprintf("file %q is not the source of any mount", [f.path])
}

root_of(p) := split(p, "/")[0]

# ---------------------------------------------------------------------------
# ExecProcessRequest: only the declared probe and hook commands, as the
# container's own user, environment and directory.

default ExecProcessRequest := false

ExecProcessRequest if count(reasons.ExecProcessRequest) == 0

# The pinned container of the container a request names, as the guest
# knows it (undefined for a container the guest did not create or the
# policy does not declare).
guest_container := c if {
	some c in policy_data.containers
	c.name == input.guest.container.name
}

exec_process := object.get(input, "process", {})

reasons.ExecProcessRequest contains msg if {
	not input.guest.container
	msg := sprintf("container %q is not one this guest created", [object.get(input, "container_id", "")])
}

reasons.ExecProcessRequest contains msg if {
	input.guest.container
	not guest_container
	msg := sprintf("container %q is not in the pod's policy", [input.guest.container.name])
}

reasons.ExecProcessRequest contains msg if {
	c := guest_container
	not c.allow_exec
	not object.get(exec_process, "args", []) in object.get(c, "exec_commands", [])
	count(object.get(c, "exec_commands", [])) == 0
	msg := sprintf("exec is not allowed in container %q; it declares no exec probe or hook", [c.name])
}

reasons.ExecProcessRequest contains msg if {
	c := guest_container
	not c.allow_exec
	not object.get(exec_process, "args", []) in object.get(c, "exec_commands", [])
	count(object.get(c, "exec_commands", [])) > 0
	msg := sprintf("exec is not allowed in container %q; allowed: the declared probe and hook commands %v", [c.name, c.exec_commands])
}

reasons.ExecProcessRequest contains msg if {
	c := guest_container
	not c.allow_exec
	created := input.guest.container.process
	sort(object.get(exec_process, "env", [])) != sort(object.get(created, "env", []))
	msg := sprintf("exec in container %q: the environment differs from the container's", [c.name])
}

reasons.ExecProcessRequest contains msg if {
	c := guest_container
	not c.allow_exec
	object.get(exec_process, "cwd", "") != object.get(input.guest.container.process, "cwd", "")
	msg := sprintf("exec in container %q: working directory %q is not the container's %q", [c.name, object.get(exec_process, "cwd", ""), object.get(input.guest.container.process, "cwd", "")])
}

reasons.ExecProcessRequest contains msg if {
	c := guest_container
	created := object.get(input.guest.container.process, "user", {})
	some m in user_mismatch(object.get(exec_process, "user", {}), object.get(created, "uid", 0), object.get(created, "gid", 0), object.get(created, "additionalGids", []))
	msg := sprintf("exec in container %q: %s", [c.name, m])
}

reasons.ExecProcessRequest contains msg if {
	c := guest_container
	created := object.get(input.guest.container.process, "capabilities", {})
	some m in caps_extra(object.get(exec_process, "capabilities", {}), object.get(created, "bounding", []))
	msg := sprintf("exec in container %q: %s", [c.name, m])
}

reasons.ExecProcessRequest contains msg if {
	c := guest_container
	not c.allow_exec
	object.get(exec_process, "terminal", false)
	not c.tty
	msg := sprintf("exec in container %q: a terminal is not declared", [c.name])
}

# ---------------------------------------------------------------------------
# ProcessIORequest: attaching is allowed; stdin only to a container that
# declared stdin (or to an exec where exec is allowed).

default ProcessIORequest := false

ProcessIORequest if count(reasons.ProcessIORequest) == 0

reasons.ProcessIORequest contains msg if {
	object.get(input, "stdin", null) != null
	not stdin_allowed
	msg := sprintf("stdin to container %q is not declared", [object.get(input.guest.container, "name", "")])
}

stdin_allowed if {
	not input.guest.exec
	guest_container.stdin
}

stdin_allowed if {
	input.guest.exec
	guest_container.allow_exec
}

# ---------------------------------------------------------------------------
# Helpers.

env_name(e) := split(e, "=")[0]

# Variables kubelet and containerd add that the generator cannot know: the
# service links of the namespace's services, KUBERNETES_*, HOSTNAME (the
# pod's name).
kubelet_env(e) if regex.match(`^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT|SERVICE_PORT_[A-Z0-9_]+|PORT|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)=`, e)

kubelet_env(e) if startswith(e, "KUBERNETES_")

kubelet_env(e) if {
	startswith(e, "HOSTNAME=")
	regex.match(policy_data.sandbox.hostname, substring(e, 9, -1))
}

# env_unexpected is the requested variables that are neither declared nor
# kubelet's; env_missing the declared ones not requested. Both compare as
# multisets: kubelet sends the pod's variables in map order.
env_unexpected(env, c) := {e | some e in env; not e in c.env; not kubelet_env(e)}

env_missing(env, c) := {e | some e in c.env; count([x | some x in env; x == e]) < count([x | some x in c.env; x == e])}

user_mismatch(user, uid, gid, gids) := {m |
	some m in [
		sprintf("uid %v is not the declared %v", [object.get(user, "uid", 0), uid]) |
			object.get(user, "uid", 0) != uid
	]
} | {m |
	some m in [
		sprintf("gid %v is not the declared %v", [object.get(user, "gid", 0), gid]) |
			object.get(user, "gid", 0) != gid
	]
} | {m |
	extra := {g | some g in object.get(user, "additionalGids", [])} - ({g | some g in gids} | {gid})
	count(extra) > 0
	m := sprintf("additional groups %v are not declared", [sort(extra)])
}

caps_extra(caps, allowed) := {m |
	some set in ["bounding", "effective", "permitted", "inheritable", "ambient"]
	extra := {x | some x in object.get(caps, set, [])} - {x | some x in allowed}
	count(extra) > 0
	m := sprintf("%s capabilities %v are not declared", [set, sort(extra)])
}
