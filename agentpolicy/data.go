package agentpolicy

// Data is a generated policy's `policy_data`: what the generator pinned for
// one pod, read by the rules in rules.rego. The generator (cloak generate)
// writes it as JSON after the rules, as Kata's genpolicy does; the guest only
// ever sees it inside the Rego module of the pod's initdata.
type Data struct {
	Sandbox    Sandbox     `json:"sandbox"`
	Containers []Container `json:"containers"`
	// GuestComponentsRestAPI is which part of the guest's REST API for
	// containers (127.0.0.1:8006) the pod may use: RestAPIResource (the
	// default, as CoCo's), RestAPIAttestation, RestAPIAll or RestAPINone.
	GuestComponentsRestAPI string `json:"guest_components_rest_api,omitempty"`
}

// The values of guest_components_rest_api, as Kata's agent option.
const (
	RestAPINone        = "none"
	RestAPIResource    = "resource"
	RestAPIAttestation = "attestation"
	RestAPIAll         = "all"
)

// Sandbox pins the pod itself.
type Sandbox struct {
	// Name is an anchored RE2 regular expression for the pod's name, as CRI
	// reports it in the io.kubernetes.cri.sandbox-name annotation and as the
	// sandbox's hostname: the exact name for a Pod, the name with the
	// controller's generated suffix for a Deployment, StatefulSet, DaemonSet
	// or Job.
	Name string `json:"name"`
	// Hostname is an anchored regular expression for CreateSandbox's
	// hostname: Name, or the pod's spec.hostname when it sets one.
	Hostname string `json:"hostname"`
	// Namespace is the pod's namespace, exactly.
	Namespace string `json:"namespace"`
	// Sysctls are the pod's net.* sysctls (CreateSandbox.sysctls), exactly.
	Sysctls map[string]string `json:"sysctls"`
}

// Container pins one container of the pod (init containers included).
type Container struct {
	// Name is the container's name (io.kubernetes.cri.container-name).
	Name string `json:"name"`
	// Image is the reference as the pod spec writes it (for messages only).
	Image string `json:"image"`
	// ImageDigest is the image's manifest digest ("sha256:..."): the guest
	// refuses a container whose pulled manifest has another digest.
	ImageDigest string `json:"image_digest"`
	// Args is the process's argv exactly, as containerd computes it from
	// the image's Entrypoint/Cmd and the pod's command/args.
	Args []string `json:"args"`
	// Env is the process's environment exactly ("NAME=value"): the image's
	// variables merged with the pod's, as containerd merges them. Variables
	// kubelet adds (service links, KUBERNETES_*, HOSTNAME) are allowed by
	// the rules, not listed here.
	Env []string `json:"env"`
	// WorkingDir is the process's cwd ("/" when neither sets one).
	WorkingDir string `json:"working_dir"`
	// UID, GID and AdditionalGIDs are the process's user and groups.
	UID            uint32   `json:"uid"`
	GID            uint32   `json:"gid"`
	AdditionalGIDs []uint32 `json:"additional_gids"`
	// Capabilities is the process's capability set (bounding, effective,
	// permitted), e.g. "CAP_CHOWN": containerd's default set with the pod's
	// add and drop applied.
	Capabilities []string `json:"capabilities"`
	// NoNewPrivileges is the process's no_new_privileges flag
	// (allowPrivilegeEscalation: false).
	NoNewPrivileges bool `json:"no_new_privileges"`
	// ReadonlyRootfs is securityContext.readOnlyRootFilesystem.
	ReadonlyRootfs bool `json:"readonly_rootfs"`
	// Mounts are the volume mounts the pod declares, beyond the ones every
	// container gets (/proc, /dev, /sys, /etc/hosts, ...: the rules know
	// those).
	Mounts []Mount `json:"mounts"`
	// Sysctls are the container's non-network sysctls, exactly.
	Sysctls map[string]string `json:"sysctls"`
	// Stdin and TTY are as declared: stdin writes are refused to a container
	// that declared no stdin, and the process's terminal must equal TTY.
	Stdin bool `json:"stdin"`
	TTY   bool `json:"tty"`
	// ExecCommands are the argvs ExecProcess may run in this container: its
	// exec probes (liveness, readiness, startup) and lifecycle hooks
	// (postStart, preStop), exactly.
	ExecCommands [][]string `json:"exec_commands"`
	// AllowExec allows any ExecProcess in this container (cloak generate
	// --allow-exec, for debugging: it changes the initdata digest).
	AllowExec bool `json:"allow_exec"`
}

// Mount is one declared volume mount.
type Mount struct {
	// Destination is the mount path in the container.
	Destination string `json:"destination"`
	// Kind is what backs it: configMap, secret, emptyDir, projected,
	// downwardAPI, or serviceAccountToken (kubelet's projected token at
	// /var/run/secrets/kubernetes.io/serviceaccount).
	Kind string `json:"kind"`
	// ReadOnly is the mount's read-only flag: a read-only volume mounted
	// writable is refused.
	ReadOnly bool `json:"readonly"`
}

// Mount kinds.
const (
	MountConfigMap           = "configMap"
	MountSecret              = "secret"
	MountEmptyDir            = "emptyDir"
	MountProjected           = "projected"
	MountDownwardAPI         = "downwardAPI"
	MountServiceAccountToken = "serviceAccountToken"
)
