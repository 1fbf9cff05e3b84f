package generate

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Kubelet's default masked and read-only paths (pkg/securitycontext, for
// procMount Default): kubelet always sends them, and containerd masks
// nothing when a CRI client (crictl) sends none.
var (
	defaultMaskedPaths = []string{"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"}
	defaultReadonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// WriteCrictl writes the pod's CRI requests as crictl reads them, for
// driving containerd without kubelet (tests, the demo): DIR/pod.json (the
// PodSandboxConfig, for crictl runp) and DIR/container-NAME.json per
// container (the ContainerConfig, for crictl create), filled in as kubelet
// fills them. Volume mounts are left out: they need the host paths kubelet
// would have prepared.
func WriteCrictl(dir string, p Pod) error {
	if p.tmpl == nil {
		return fmt.Errorf("crictl: pod %s/%s was not generated here", p.Kind, p.Name)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(abs, "logs"), 0o755); err != nil {
		return fmt.Errorf("crictl: %w", err)
	}
	t := p.tmpl
	spec := t.spec
	sum := sha256.Sum256([]byte(p.Namespace + "/" + t.exampleName))
	uid := fmt.Sprintf("%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
	hostname := t.exampleName
	if spec.Hostname != "" {
		hostname = spec.Hostname
	}
	annotations := map[string]string{}
	for k, v := range t.meta.annotations {
		annotations[k] = v
	}
	annotations[AnnotationInitdata] = p.Annotation
	annotations["io.containerd.cri.runtime-handler"] = p.RuntimeClass
	sysctls := map[string]string{}
	groups := supplementalGroups(spec.SecurityContext)
	podSC := &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: namespaceOptions(spec), SupplementalGroups: groups}
	if psc := spec.SecurityContext; psc != nil {
		for _, s := range psc.Sysctls {
			sysctls[dotSysctl(s.Name)] = s.Value
		}
		podSC.RunAsUser = int64Value(psc.RunAsUser)
		podSC.RunAsGroup = int64Value(psc.RunAsGroup)
	}
	pod := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: t.exampleName, Namespace: p.Namespace, Uid: uid, Attempt: 0},
		Hostname:     hostname,
		LogDirectory: filepath.Join(abs, "logs"),
		Labels:       t.meta.labels,
		Annotations:  annotations,
		Linux:        &runtimeapi.LinuxPodSandboxConfig{Sysctls: sysctls, SecurityContext: podSC},
	}
	if err := writeJSON(filepath.Join(abs, "pod.json"), pod); err != nil {
		return err
	}
	all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	for i := range all {
		c := &all[i]
		cfg, err := containerConfig(t, c, p.Data.Containers[i].UID, groups)
		if err != nil {
			return err
		}
		if err := writeJSON(filepath.Join(abs, "container-"+c.Name+".json"), cfg); err != nil {
			return err
		}
	}
	return nil
}

// containerConfig is kubelet's generateContainerConfig for c, less mounts
// and devices.
func containerConfig(t *podTemplate, c *corev1.Container, uid uint32, groups []int64) (*runtimeapi.ContainerConfig, error) {
	env, err := kubeletEnv(t, c, "")
	if err != nil {
		return nil, err
	}
	envMap := map[string]string{}
	var envs []*runtimeapi.KeyValue
	for _, kv := range env {
		envMap[kv.name] = kv.value
		envs = append(envs, &runtimeapi.KeyValue{Key: kv.name, Value: []byte(kv.value)})
	}
	// Kubelet sends the uid it settled on: runAsUser, else the image's.
	runAsUser := int64(uid)
	sc := &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions:   namespaceOptions(t.spec),
		RunAsUser:          &runtimeapi.Int64Value{Value: runAsUser},
		SupplementalGroups: groups,
		MaskedPaths:        defaultMaskedPaths,
		ReadonlyPaths:      defaultReadonlyPaths,
	}
	if psc := t.spec.SecurityContext; psc != nil {
		sc.RunAsGroup = int64Value(psc.RunAsGroup)
	}
	if csc := c.SecurityContext; csc != nil {
		if csc.RunAsGroup != nil {
			sc.RunAsGroup = int64Value(csc.RunAsGroup)
		}
		sc.ReadonlyRootfs = csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem
		sc.NoNewPrivs = csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation
		if cc := csc.Capabilities; cc != nil {
			sc.Capabilities = &runtimeapi.Capability{}
			for _, a := range cc.Add {
				sc.Capabilities.AddCapabilities = append(sc.Capabilities.AddCapabilities, string(a))
			}
			for _, d := range cc.Drop {
				sc.Capabilities.DropCapabilities = append(sc.Capabilities.DropCapabilities, string(d))
			}
		}
	}
	return &runtimeapi.ContainerConfig{
		Metadata:   &runtimeapi.ContainerMetadata{Name: c.Name},
		Image:      &runtimeapi.ImageSpec{Image: c.Image},
		Command:    expandAll(c.Command, envMap),
		Args:       expandAll(c.Args, envMap),
		WorkingDir: c.WorkingDir,
		Envs:       envs,
		LogPath:    c.Name + ".log",
		Stdin:      c.Stdin,
		StdinOnce:  c.StdinOnce,
		Tty:        c.TTY,
		Linux:      &runtimeapi.LinuxContainerConfig{SecurityContext: sc},
	}, nil
}

// supplementalGroups is what kubelet sends: fsGroup, then supplementalGroups.
func supplementalGroups(psc *corev1.PodSecurityContext) []int64 {
	if psc == nil {
		return nil
	}
	var out []int64
	if psc.FSGroup != nil {
		out = append(out, *psc.FSGroup)
	}
	return append(out, psc.SupplementalGroups...)
}

func namespaceOptions(spec *corev1.PodSpec) *runtimeapi.NamespaceOption {
	pid := runtimeapi.NamespaceMode_CONTAINER
	if spec.ShareProcessNamespace != nil && *spec.ShareProcessNamespace {
		pid = runtimeapi.NamespaceMode_POD
	}
	return &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: pid, Ipc: runtimeapi.NamespaceMode_POD}
}

func int64Value(v *int64) *runtimeapi.Int64Value {
	if v == nil {
		return nil
	}
	return &runtimeapi.Int64Value{Value: *v}
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("crictl: %w", err)
	}
	return nil
}
