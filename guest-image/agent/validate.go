package agent

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"

	"github.com/cloak-containers/cloak/agentapi"
)

// Limits on host-controlled fields beyond agentapi.MaxMessageSize. They are
// generous for real pods and small enough that a hostile host cannot make
// the agent spend much memory or time on one request.
const (
	maxProcessJSON   = 1 << 20
	maxResourcesJSON = 64 << 10
	maxImageRef      = 4096
	maxPlatform      = 64
	maxHostname      = 64
	maxListEntries   = 64
	maxShortString   = 512
	maxInitdata      = 1 << 20
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// checkID validates a container, exec or sandbox id: ids become file names
// under StateDir and runc container names.
func checkID(kind, id string) error {
	if !idPattern.MatchString(id) {
		return invalid("%s id %q: want 1-128 characters of A-Z a-z 0-9 _ . - starting with a letter or digit", kind, truncate(id))
	}
	return nil
}

// truncate keeps hostile values from flooding error messages and logs.
func truncate(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// defaultPath is the PATH containers get when neither the image nor the
// host sets one (containerd's default).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// specRules are the guest's own places a host spec may bind-mount from.
type specRules struct {
	// bindDirs are guest directories whose contents containers may share
	// (the sandbox's shared dir under StateDir).
	bindDirs []string
	// bindFiles are single guest files containers may see (the network
	// configuration the agent wrote: resolv.conf, hosts, hostname).
	bindFiles []string
	// sources are the guest sources of the request's mount_sources, by
	// mount index (see mountSources); each becomes an allowed bind source.
	sources map[int]string
}

// allowedMountTypes are the kernel filesystems a container may mount for
// itself; every other type would name host-chosen storage.
var allowedMountTypes = map[string]bool{
	"proc": true, "sysfs": true, "tmpfs": true, "devpts": true, "mqueue": true,
	"cgroup": true, "cgroup2": true, "bind": true, "": true,
}

// userLookup resolves an image's "user[:group]" against the image's own
// /etc/passwd and /etc/group.
type userLookup func(user string) (specs.User, error)

// containerSpec turns the host's OCI spec into the one runc runs: parsed
// within limits, refused if it asks for anything the untrusted host must not
// decide (hooks run code outside the container, host paths, joining foreign
// namespaces, device nodes), the root replaced with the guest-pulled image,
// and the image's defaults merged in the way containerd does.
func containerSpec(sandboxID, id string, raw []byte, img ocispec.ImageConfig, lookup userLookup, rules specRules) (*specs.Spec, error) {
	if len(raw) == 0 {
		return nil, invalid("container %q: oci_spec is empty", id)
	}
	if len(raw) > agentapi.MaxMessageSize {
		return nil, invalid("container %q: oci_spec is %d bytes, limit %d", id, len(raw), agentapi.MaxMessageSize)
	}
	var s specs.Spec
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, invalid("container %q: oci_spec is not an OCI runtime spec: %v", id, err)
	}
	if s.Process == nil {
		return nil, invalid("container %q: oci_spec has no process", id)
	}
	if s.Linux == nil {
		return nil, invalid("container %q: oci_spec has no linux section", id)
	}
	if err := applySources(&s, &rules); err != nil {
		return nil, err
	}
	if err := refuseHostControl(id, &s, rules); err != nil {
		return nil, err
	}
	if err := mergeImageConfig(&s, img, lookup); err != nil {
		return nil, invalid("container %q: %v", id, err)
	}
	if err := checkProcess(s.Process); err != nil {
		return nil, invalid("container %q: %v", id, err)
	}
	readonly := s.Root != nil && s.Root.Readonly
	s.Root = &specs.Root{Path: "rootfs", Readonly: readonly}
	// The cgroup is the agent's choice: a host-chosen path could put the
	// container into the agent's own cgroup, and `runc kill --all` would then
	// reach the agent.
	s.Linux.CgroupsPath = "/cloak/" + sandboxID + "/" + id
	return &s, nil
}

func refuseHostControl(id string, s *specs.Spec, rules specRules) error {
	if h := s.Hooks; h != nil && len(h.Prestart)+len(h.CreateRuntime)+len(h.CreateContainer)+len(h.StartContainer)+len(h.Poststart)+len(h.Poststop) > 0 {
		return policyErr("container %q: OCI hooks are refused: they run host-chosen programs outside the container", id)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			return policyErr("container %q: namespace %s path %q is refused: containers may not join namespaces the host names", id, ns.Type, truncate(ns.Path))
		}
	}
	hasMountNS := false
	for _, ns := range s.Linux.Namespaces {
		hasMountNS = hasMountNS || ns.Type == specs.MountNamespace
	}
	if !hasMountNS {
		return policyErr("container %q: a mount namespace is required: without one the container's rootfs would replace the agent's", id)
	}
	if len(s.Linux.Devices) > 0 {
		return policyErr("container %q: linux.devices are refused: device nodes would expose the guest's disks and memory", id)
	}
	for _, m := range s.Mounts {
		if err := checkMount(m, rules); err != nil {
			return policyErr("container %q: mount %q: %v", id, truncate(m.Destination), err)
		}
	}
	return nil
}

func policyErr(format string, args ...any) error {
	return agentErr(codes.PermissionDenied, agentapi.ReasonPolicy, format, args...)
}

func checkMount(m specs.Mount, rules specRules) error {
	if !path.IsAbs(m.Destination) {
		return fmt.Errorf("destination must be an absolute path")
	}
	bind := m.Type == "bind"
	for _, o := range m.Options {
		bind = bind || o == "bind" || o == "rbind"
	}
	if !allowedMountTypes[m.Type] {
		return fmt.Errorf("type %q is refused: only proc, sysfs, tmpfs, devpts, mqueue, cgroup and binds of the guest's own files", truncate(m.Type))
	}
	if !bind {
		if m.Type == "" {
			return fmt.Errorf("no type and not a bind mount")
		}
		return nil
	}
	src := m.Source
	if !path.IsAbs(src) || path.Clean(src) != src {
		return fmt.Errorf("bind source %q must be a clean absolute path", truncate(src))
	}
	for _, f := range rules.bindFiles {
		if src == f {
			return nil
		}
	}
	for _, d := range rules.bindDirs {
		if strings.HasPrefix(src, d+"/") {
			return nil
		}
	}
	return fmt.Errorf("bind source %q is refused: the host's paths do not exist in the guest, and the guest's own files outside the sandbox are not shared", truncate(src))
}

// mergeImageConfig fills what the host left to the image, like containerd's
// WithImageConfig: image env first (the host's entries override), args from
// Entrypoint+Cmd when the host gave none, the image's working dir and user
// when the host left the defaults (cwd "" or "/", user 0:0).
func mergeImageConfig(s *specs.Spec, img ocispec.ImageConfig, lookup userLookup) error {
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
			return fmt.Errorf("image user %q: %w", truncate(img.User), err)
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
		return fmt.Errorf("process cwd %q must be absolute", truncate(p.Cwd))
	}
	if p.ConsoleSize != nil && (p.ConsoleSize.Height > 10000 || p.ConsoleSize.Width > 10000) {
		return fmt.Errorf("console size %dx%d is too large", p.ConsoleSize.Width, p.ConsoleSize.Height)
	}
	return nil
}

// execProcess parses an ExecProcess request's OCI Process JSON.
func execProcess(containerID, execID string, raw []byte) (*specs.Process, error) {
	if len(raw) == 0 {
		return nil, invalid("exec %q in container %q: process is empty", execID, containerID)
	}
	if len(raw) > maxProcessJSON {
		return nil, invalid("exec %q in container %q: process is %d bytes, limit %d", execID, containerID, len(raw), maxProcessJSON)
	}
	var p specs.Process
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, invalid("exec %q in container %q: process is not an OCI runtime-spec Process: %v", execID, containerID, err)
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if err := checkProcess(&p); err != nil {
		return nil, invalid("exec %q in container %q: %v", execID, containerID, err)
	}
	return &p, nil
}

// linuxResources parses an UpdateContainer request's LinuxResources JSON.
func linuxResources(containerID string, raw []byte) (*specs.LinuxResources, error) {
	if len(raw) == 0 {
		return nil, invalid("update container %q: resources are empty", containerID)
	}
	if len(raw) > maxResourcesJSON {
		return nil, invalid("update container %q: resources are %d bytes, limit %d", containerID, len(raw), maxResourcesJSON)
	}
	var r specs.LinuxResources
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, invalid("update container %q: resources are not OCI LinuxResources: %v", containerID, err)
	}
	if len(r.Devices) > 0 {
		return nil, policyErr("update container %q: device cgroup rules are refused: they would open the guest's devices", containerID)
	}
	return &r, nil
}

// checkSandboxRequest bounds CreateSandbox's fields; their meaning (CIDRs,
// MACs, routes) is checked where they are applied.
func checkSandboxRequest(req *agentapi.CreateSandboxRequest) error {
	if err := checkID("sandbox", req.GetSandboxId()); err != nil {
		return err
	}
	if len(req.GetHostname()) > maxHostname {
		return invalid("hostname is %d bytes, limit %d", len(req.GetHostname()), maxHostname)
	}
	if len(req.GetInitdata()) > maxInitdata {
		return invalid("initdata is %d bytes, limit %d", len(req.GetInitdata()), maxInitdata)
	}
	if err := checkFSTag(req.GetSharedFsTag()); err != nil {
		return err
	}
	lists := []struct {
		name string
		n    int
	}{
		{"dns_servers", len(req.GetDnsServers())},
		{"dns_searches", len(req.GetDnsSearches())},
		{"interfaces", len(req.GetInterfaces())},
		{"routes", len(req.GetRoutes())},
	}
	for _, l := range lists {
		if l.n > maxListEntries {
			return invalid("%s has %d entries, limit %d", l.name, l.n, maxListEntries)
		}
	}
	strs := append(append([]string{}, req.GetDnsServers()...), req.GetDnsSearches()...)
	for _, i := range req.GetInterfaces() {
		if len(i.GetAddresses()) > maxListEntries {
			return invalid("interface %q has %d addresses, limit %d", truncate(i.GetName()), len(i.GetAddresses()), maxListEntries)
		}
		strs = append(append(strs, i.GetName(), i.GetMac()), i.GetAddresses()...)
	}
	for _, r := range req.GetRoutes() {
		strs = append(strs, r.GetDestination(), r.GetGateway(), r.GetDevice())
	}
	for _, s := range strs {
		if len(s) > maxShortString {
			return invalid("a network field is %d bytes, limit %d", len(s), maxShortString)
		}
	}
	return nil
}

// checkPullRequest bounds PullImage's fields; the reference itself is
// parsed by the puller.
func checkPullRequest(req *agentapi.PullImageRequest) error {
	if req.GetImage() == "" || len(req.GetImage()) > maxImageRef {
		return invalid("image reference is %d bytes, want 1-%d", len(req.GetImage()), maxImageRef)
	}
	if len(req.GetPlatform()) > maxPlatform {
		return invalid("platform is %d bytes, limit %d", len(req.GetPlatform()), maxPlatform)
	}
	reg := req.GetRegistry()
	if len(reg.GetInsecureRegistries()) > maxListEntries || len(reg.GetMirrors()) > maxListEntries {
		return invalid("registry options have more than %d entries", maxListEntries)
	}
	for _, s := range reg.GetInsecureRegistries() {
		if len(s) > maxShortString {
			return invalid("insecure registry is %d bytes, limit %d", len(s), maxShortString)
		}
	}
	for k, v := range reg.GetMirrors() {
		if len(k) > maxShortString || len(v) > maxShortString {
			return invalid("registry mirror %q is longer than %d bytes", truncate(k), maxShortString)
		}
	}
	return nil
}
