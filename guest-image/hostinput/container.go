package hostinput

import (
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// defaultPath is the PATH containers get when neither the image nor the
// host sets one (containerd's default).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// SpecRules are the guest's own places a host spec may bind-mount from.
type SpecRules struct {
	// BindDirs are guest directories whose contents containers may share
	// (the sandbox's shared dir under the agent's state dir).
	BindDirs []string
	// BindFiles are single guest files containers may see (the network
	// configuration the agent wrote: resolv.conf, hosts, hostname).
	BindFiles []string
	// Sources are the guest sources of the request's mount_sources, by
	// mount index (see MountSources); each becomes an allowed bind source.
	Sources map[int]string
}

// allowedMountTypes are the kernel filesystems a container may mount for
// itself; every other type would name host-chosen storage.
var allowedMountTypes = map[string]bool{
	"proc": true, "sysfs": true, "tmpfs": true, "devpts": true, "mqueue": true,
	"cgroup": true, "cgroup2": true, "bind": true, "": true,
}

// UserLookup resolves an image's "user[:group]" against the image's own
// /etc/passwd and /etc/group.
type UserLookup func(user string) (specs.User, error)

// ContainerSpec turns the host's OCI spec into the one runc runs: parsed
// within limits, refused if it asks for anything the untrusted host must not
// decide (hooks run code outside the container, host paths, joining foreign
// namespaces, device nodes), the root replaced with the guest-pulled image,
// and the image's defaults merged in the way containerd does.
func ContainerSpec(sandboxID, id string, raw []byte, img ocispec.ImageConfig, lookup UserLookup, rules SpecRules) (*specs.Spec, error) {
	if len(raw) == 0 {
		return nil, Invalid("container %q: oci_spec is empty", id)
	}
	if len(raw) > agentapi.MaxMessageSize {
		return nil, Invalid("container %q: oci_spec is %d bytes, limit %d", id, len(raw), agentapi.MaxMessageSize)
	}
	var s specs.Spec
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, Invalid("container %q: oci_spec is not an OCI runtime spec: %v", id, err)
	}
	if s.Process == nil {
		return nil, Invalid("container %q: oci_spec has no process", id)
	}
	if s.Linux == nil {
		return nil, Invalid("container %q: oci_spec has no linux section", id)
	}
	if err := applySources(&s, &rules); err != nil {
		return nil, err
	}
	if err := refuseHostControl(id, &s, rules); err != nil {
		return nil, err
	}
	if err := mergeImageConfig(&s, img, lookup); err != nil {
		return nil, Invalid("container %q: %v", id, err)
	}
	if err := checkProcess(s.Process); err != nil {
		return nil, Invalid("container %q: %v", id, err)
	}
	readonly := s.Root != nil && s.Root.Readonly
	s.Root = &specs.Root{Path: "rootfs", Readonly: readonly}
	// The cgroup is the agent's choice: a host-chosen path could put the
	// container into the agent's own cgroup, and `runc kill --all` would then
	// reach the agent.
	s.Linux.CgroupsPath = "/cloak/" + sandboxID + "/" + id
	return &s, nil
}

// applySources sets the guest sources of the spec's bind mounts that have
// one; those exact paths become allowed bind sources.
func applySources(s *specs.Spec, rules *SpecRules) error {
	for i, p := range rules.Sources {
		if i < 0 || i >= len(s.Mounts) {
			return Invalid("mount source for mount %d, but the spec has %d mounts", i, len(s.Mounts))
		}
		m := &s.Mounts[i]
		if m.Type != "bind" && !slices.Contains(m.Options, "bind") && !slices.Contains(m.Options, "rbind") {
			return Invalid("mount %d (%q) has a mount source but is not a bind mount", i, Truncate(m.Destination))
		}
		m.Source = p
		rules.BindFiles = append(rules.BindFiles, p)
	}
	return nil
}

func refuseHostControl(id string, s *specs.Spec, rules SpecRules) error {
	//lint:ignore SA1019 a host may still send the deprecated prestart hooks, and they must be refused like the others
	if h := s.Hooks; h != nil && len(h.Prestart)+len(h.CreateRuntime)+len(h.CreateContainer)+len(h.StartContainer)+len(h.Poststart)+len(h.Poststop) > 0 {
		return Denied("container %q: OCI hooks are refused: they run host-chosen programs outside the container", id)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			return Denied("container %q: namespace %s path %q is refused: containers may not join namespaces the host names", id, ns.Type, Truncate(ns.Path))
		}
	}
	hasMountNS := false
	for _, ns := range s.Linux.Namespaces {
		hasMountNS = hasMountNS || ns.Type == specs.MountNamespace
	}
	if !hasMountNS {
		return Denied("container %q: a mount namespace is required: without one the container's rootfs would replace the agent's", id)
	}
	if len(s.Linux.Devices) > 0 {
		return Denied("container %q: linux.devices are refused: device nodes would expose the guest's disks and memory", id)
	}
	for _, m := range s.Mounts {
		if err := checkMount(m, rules); err != nil {
			return Denied("container %q: mount %q: %v", id, Truncate(m.Destination), err)
		}
	}
	return nil
}

func checkMount(m specs.Mount, rules SpecRules) error {
	if !path.IsAbs(m.Destination) {
		return fmt.Errorf("destination must be an absolute path")
	}
	bind := m.Type == "bind"
	for _, o := range m.Options {
		bind = bind || o == "bind" || o == "rbind"
	}
	if !allowedMountTypes[m.Type] {
		return fmt.Errorf("type %q is refused: only proc, sysfs, tmpfs, devpts, mqueue, cgroup and binds of the guest's own files", Truncate(m.Type))
	}
	if !bind {
		if m.Type == "" {
			return fmt.Errorf("no type and not a bind mount")
		}
		return nil
	}
	src := m.Source
	if !path.IsAbs(src) || path.Clean(src) != src {
		return fmt.Errorf("bind source %q must be a clean absolute path", Truncate(src))
	}
	for _, f := range rules.BindFiles {
		if src == f {
			return nil
		}
	}
	for _, d := range rules.BindDirs {
		if strings.HasPrefix(src, d+"/") {
			return nil
		}
	}
	return fmt.Errorf("bind source %q is refused: the host's paths do not exist in the guest, and the guest's own files outside the sandbox are not shared", Truncate(src))
}

// mergeImageConfig fills what the host left to the image, like containerd's
// WithImageConfig: image env first (the host's entries override), args from
// Entrypoint+Cmd when the host gave none, the image's working dir and user
// when the host left the defaults (cwd "" or "/", user 0:0).
func mergeImageConfig(s *specs.Spec, img ocispec.ImageConfig, lookup UserLookup) error {
	p := s.Process
	p.Env = mergeEnv(img.Env, p.Env)
	if len(p.Args) == 0 {
		p.Args = append(append([]string{}, img.Entrypoint...), img.Cmd...)
	}
	// Container managers send "/" when the pod names no working dir, so
	// "/" as well as "" leaves the choice to the image.
	if (p.Cwd == "" || p.Cwd == "/") && img.WorkingDir != "" {
		p.Cwd = img.WorkingDir
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if img.User != "" && p.User.UID == 0 && p.User.GID == 0 && len(p.User.AdditionalGids) == 0 {
		u, err := lookup(img.User)
		if err != nil {
			return fmt.Errorf("image user %q: %w", Truncate(img.User), err)
		}
		p.User = u
	}
	return nil
}

// mergeEnv returns defaults overridden by overrides (by variable name),
// with a PATH when neither has one.
func mergeEnv(defaults, overrides []string) []string {
	out := make([]string, 0, len(defaults)+len(overrides)+1)
	index := map[string]int{}
	for _, list := range [][]string{defaults, overrides} {
		for _, kv := range list {
			name, _, _ := strings.Cut(kv, "=")
			if i, ok := index[name]; ok {
				out[i] = kv
				continue
			}
			index[name] = len(out)
			out = append(out, kv)
		}
	}
	if _, ok := index["PATH"]; !ok {
		out = append(out, defaultPath)
	}
	return out
}

// checkProcess validates a process runc will start (container init or exec).
func checkProcess(p *specs.Process) error {
	if len(p.Args) == 0 {
		return fmt.Errorf("process has no args and the image has no Entrypoint or Cmd")
	}
	if !path.IsAbs(p.Cwd) {
		return fmt.Errorf("process cwd %q must be absolute", Truncate(p.Cwd))
	}
	if p.ConsoleSize != nil && (p.ConsoleSize.Height > maxConsoleSize || p.ConsoleSize.Width > maxConsoleSize) {
		return fmt.Errorf("console size %dx%d is too large", p.ConsoleSize.Width, p.ConsoleSize.Height)
	}
	return nil
}

// ExecProcess parses an ExecProcess request's OCI Process JSON.
func ExecProcess(containerID, execID string, raw []byte) (*specs.Process, error) {
	if len(raw) == 0 {
		return nil, Invalid("exec %q in container %q: process is empty", execID, containerID)
	}
	if len(raw) > maxProcessJSON {
		return nil, Invalid("exec %q in container %q: process is %d bytes, limit %d", execID, containerID, len(raw), maxProcessJSON)
	}
	var p specs.Process
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, Invalid("exec %q in container %q: process is not an OCI runtime-spec Process: %v", execID, containerID, err)
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if err := checkProcess(&p); err != nil {
		return nil, Invalid("exec %q in container %q: %v", execID, containerID, err)
	}
	return &p, nil
}

// LinuxResources parses an UpdateContainer request's LinuxResources JSON.
func LinuxResources(containerID string, raw []byte) (*specs.LinuxResources, error) {
	if len(raw) == 0 {
		return nil, Invalid("update container %q: resources are empty", containerID)
	}
	if len(raw) > maxResourcesJSON {
		return nil, Invalid("update container %q: resources are %d bytes, limit %d", containerID, len(raw), maxResourcesJSON)
	}
	var r specs.LinuxResources
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, Invalid("update container %q: resources are not OCI LinuxResources: %v", containerID, err)
	}
	if len(r.Devices) > 0 {
		return nil, Denied("update container %q: device cgroup rules are refused: they would open the guest's devices", containerID)
	}
	return &r, nil
}
