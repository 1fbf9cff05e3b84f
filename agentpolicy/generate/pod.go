package generate

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/cloak-containers/cloak/agentpolicy"
)

// ServiceAccountTokenPath is where Kubernetes' ServiceAccount admission
// mounts the projected API token in every container.
const ServiceAccountTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// defaultPath is containerd's PATH for a process whose image sets none
// (pkg/oci defaultUnixEnv).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// defaultCapabilities is containerd's capability set for a container that
// is not privileged (pkg/oci defaultUnixCaps), in containerd's order.
var defaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
	"CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// podTemplate is one pod to pin: a Pod, or a controller's template.
type podTemplate struct {
	kind, name, namespace string
	path                  string // field path of the pod spec, e.g. spec.template.spec
	namePattern           string // anchored regexp of the pods' names
	exampleName           string // a name matching namePattern (crictl files)
	meta                  *podMeta
	spec                  *corev1.PodSpec
}

type podMeta struct {
	labels, annotations map[string]string
}

// podData pins one pod template.
func (g *generator) podData(ctx context.Context, p *podTemplate) (agentpolicy.Data, []string, error) {
	spec := p.spec
	var warnings []string
	if err := g.refusePod(p); err != nil {
		return agentpolicy.Data{}, nil, err
	}
	netSysctls, otherSysctls := map[string]string{}, map[string]string{}
	if sc := spec.SecurityContext; sc != nil {
		for _, s := range sc.Sysctls {
			n := dotSysctl(s.Name)
			if strings.HasPrefix(n, "net.") {
				netSysctls[n] = s.Value
			} else {
				otherSysctls[n] = s.Value
			}
		}
	}
	hostname := p.namePattern
	if spec.Hostname != "" {
		hostname = "^" + regexpQuote(spec.Hostname) + "$"
	}
	d := agentpolicy.Data{Sandbox: agentpolicy.Sandbox{
		Name: p.namePattern, Hostname: hostname, Namespace: p.namespace, Sysctls: netSysctls,
	}}
	if v, ok := p.meta.annotations[AnnotationRestAPI]; ok {
		switch v {
		case agentpolicy.RestAPINone, agentpolicy.RestAPIResource, agentpolicy.RestAPIAttestation, agentpolicy.RestAPIAll:
			d.GuestComponentsRestAPI = v
		default:
			return agentpolicy.Data{}, nil, p.refuse("", "metadata.annotations."+AnnotationRestAPI, fmt.Sprintf("%q is not a part of the guest's REST API", v), "use none, resource (the default), attestation or all")
		}
	}
	for i := range spec.InitContainers {
		c, w, err := g.container(ctx, p, &spec.InitContainers[i], fmt.Sprintf("%s.initContainers[%d]", p.path, i), otherSysctls)
		if err != nil {
			return agentpolicy.Data{}, nil, err
		}
		warnings = append(warnings, w...)
		d.Containers = append(d.Containers, c)
	}
	for i := range spec.Containers {
		c, w, err := g.container(ctx, p, &spec.Containers[i], fmt.Sprintf("%s.containers[%d]", p.path, i), otherSysctls)
		if err != nil {
			return agentpolicy.Data{}, nil, err
		}
		warnings = append(warnings, w...)
		d.Containers = append(d.Containers, c)
	}
	return d, warnings, nil
}

// refusePod refuses what a confidential pod must not ask for: the host's
// namespaces and any volume backed by something the host controls or
// provides (hostPath, persistent volumes, CSI, ...).
func (g *generator) refusePod(p *podTemplate) error {
	spec := p.spec
	for _, h := range []struct {
		on    bool
		field string
	}{{spec.HostNetwork, "hostNetwork"}, {spec.HostPID, "hostPID"}, {spec.HostIPC, "hostIPC"}} {
		if h.on {
			return p.refuse("", p.path+"."+h.field, "a confidential pod cannot share the host's namespaces", "remove "+h.field+" (hostPort is fine for exposing a port)")
		}
	}
	if len(spec.Containers) == 0 {
		return p.refuse("", p.path+".containers", "the pod has no containers", "add a container")
	}
	if len(spec.EphemeralContainers) > 0 {
		return p.refuse(spec.EphemeralContainers[0].Name, p.path+".ephemeralContainers", "ephemeral containers cannot be pinned in advance", "remove them; for debugging generate with --allow-exec")
	}
	for i, v := range spec.Volumes {
		if volumeKind(&v) == "" {
			return p.refuse("", fmt.Sprintf("%s.volumes[%d]", p.path, i),
				fmt.Sprintf("volume %q is of a type a confidential pod cannot use (its content or backing lives on the untrusted host)", v.Name),
				"use only configMap, secret, emptyDir, projected or downwardAPI volumes; fetch other data from inside the guest (e.g. sealed secrets from the KBS)")
		}
	}
	return nil
}

func volumeKind(v *corev1.Volume) string {
	switch {
	case v.ConfigMap != nil:
		return agentpolicy.MountConfigMap
	case v.Secret != nil:
		return agentpolicy.MountSecret
	case v.EmptyDir != nil:
		return agentpolicy.MountEmptyDir
	case v.Projected != nil:
		return agentpolicy.MountProjected
	case v.DownwardAPI != nil:
		return agentpolicy.MountDownwardAPI
	}
	return ""
}

// container pins one container as kubelet describes it to CRI and
// containerd v2.2's CRI turns it into an OCI process.
func (g *generator) container(ctx context.Context, p *podTemplate, c *corev1.Container, path string, sysctls map[string]string) (agentpolicy.Container, []string, error) {
	var warnings []string
	sc := c.SecurityContext
	if sc != nil && sc.Privileged != nil && *sc.Privileged {
		return agentpolicy.Container{}, nil, p.refuse(c.Name, path+".securityContext.privileged", "a privileged container gets the guest's devices and every capability, which the host could use to reach into it", "remove privileged: true; add only the capabilities it needs under securityContext.capabilities.add")
	}
	if sc != nil && sc.ProcMount != nil && *sc.ProcMount == corev1.UnmaskedProcMount {
		return agentpolicy.Container{}, nil, p.refuse(c.Name, path+".securityContext.procMount", "an unmasked /proc is refused", "remove procMount: Unmasked")
	}
	if len(c.VolumeDevices) > 0 {
		return agentpolicy.Container{}, nil, p.refuse(c.Name, path+".volumeDevices", "block devices come from the host", "remove volumeDevices")
	}
	if len(c.EnvFrom) > 0 {
		return agentpolicy.Container{}, nil, p.refuse(c.Name, path+".envFrom", "the variables of an envFrom source are not known when the policy is generated", "list the variables under env with plain values, or mount the configMap/secret as a volume")
	}
	if c.Image == "" {
		return agentpolicy.Container{}, nil, p.refuse(c.Name, path+".image", "no image", "set the image")
	}

	img, err := g.opts.Resolver.Resolve(ctx, c.Image)
	if err != nil {
		return agentpolicy.Container{}, nil, p.refuse(c.Name, path+".image", fmt.Sprintf("resolve image %q: %v", c.Image, err),
			"check the reference, that the registry is reachable from here (--mirror HOST=ENDPOINT to ask another, --insecure-registry HOST:PORT for plain HTTP) and that docker login was done for a private one")
	}

	podEnv, err := kubeletEnv(p, c, path)
	if err != nil {
		return agentpolicy.Container{}, nil, err
	}
	envMap := map[string]string{}
	for _, kv := range podEnv {
		envMap[kv.name] = kv.value
	}
	command, args := expandAll(c.Command, envMap), expandAll(c.Args, envMap)
	argv := processArgs(command, args, img)
	if len(argv) == 0 {
		return agentpolicy.Container{}, nil, p.refuse(c.Name, path+".command", "neither the pod nor the image gives a command (containerd refuses: no command specified)", "set command")
	}

	uid, gid, w, err := user(p, c, path, img)
	if err != nil {
		return agentpolicy.Container{}, nil, err
	}
	warnings = append(warnings, w...)

	caps, err := capabilities(p, c, path)
	if err != nil {
		return agentpolicy.Container{}, nil, err
	}

	mounts, err := mounts(p, c, path)
	if err != nil {
		return agentpolicy.Container{}, nil, err
	}

	cwd := "/"
	if c.WorkingDir != "" {
		cwd = c.WorkingDir
	} else if img.WorkingDir != "" {
		cwd = img.WorkingDir
	}

	out := agentpolicy.Container{
		Name:            c.Name,
		Image:           c.Image,
		ImageDigest:     img.Digest,
		Args:            argv,
		Env:             processEnv(img.Env, podEnv, c.TTY),
		WorkingDir:      cwd,
		UID:             uid,
		GID:             gid,
		AdditionalGIDs:  additionalGIDs(gid, p.spec.SecurityContext),
		Capabilities:    caps,
		NoNewPrivileges: sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		ReadonlyRootfs:  sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem,
		Mounts:          mounts,
		Sysctls:         sysctls,
		Stdin:           c.Stdin,
		TTY:             c.TTY,
		ExecCommands:    execCommands(c),
		AllowExec:       g.opts.AllowExec,
	}
	return out, warnings, nil
}

type envVar struct{ name, value string }

// kubeletEnv is the container's environment as kubelet sends it to CRI
// (kubelet's makeEnvironmentVariables): each name once with its last
// value, $(VAR) expanded against the variables defined before it. Kubelet
// sends them in map order, so their order in the spec is random; here
// they are in the order of first declaration.
func kubeletEnv(p *podTemplate, c *corev1.Container, path string) ([]envVar, error) {
	var out []envVar
	index := map[string]int{}
	values := map[string]string{}
	for i, e := range c.Env {
		if e.ValueFrom != nil {
			return nil, p.refuse(c.Name, fmt.Sprintf("%s.env[%d].valueFrom", path, i),
				fmt.Sprintf("variable %s takes its value from the cluster (valueFrom), which is not known when the policy is generated", e.Name),
				fmt.Sprintf("give %s a plain value, or mount the secret/configMap/downwardAPI as a volume and read it from a file", e.Name))
		}
		v := e.Value
		if v != "" {
			v = expand(v, mapLookup(values))
		}
		values[e.Name] = v
		if j, ok := index[e.Name]; ok {
			out[j].value = v
			continue
		}
		index[e.Name] = len(out)
		out = append(out, envVar{e.Name, v})
	}
	return out, nil
}

func expandAll(in []string, env map[string]string) []string {
	if in == nil {
		return nil
	}
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = expand(s, mapLookup(env))
	}
	return out
}

// processArgs is containerd's CRI WithProcessArgs: the pod's command
// replaces the image's Entrypoint and Cmd; args alone replace Cmd.
func processArgs(command, args []string, img Image) []string {
	if len(command) == 0 {
		if len(args) == 0 {
			args = img.Cmd
		}
		if len(img.Entrypoint) != 1 || img.Entrypoint[0] != "" {
			command = img.Entrypoint
		}
	}
	return append(slices.Clone(command), args...)
}

// processEnv is the OCI process env containerd's CRI builds: PATH (its
// default), TERM=xterm for a TTY, HOSTNAME, then the image's variables
// followed by the pod's, through pkg/oci's replaceOrAppendEnvValues. That
// replaces only the variables already there (PATH, TERM, HOSTNAME); a pod
// variable that overrides an image variable is appended after it, so both
// are in the spec and runc's setenv makes the pod's (the last) win.
// HOSTNAME is left out unless the image or pod sets it: containerd sets it
// to the sandbox's hostname, which the rules check.
func processEnv(imageEnv []string, podEnv []envVar, tty bool) []string {
	base := []string{defaultPath}
	if tty {
		base = append(base, "TERM=xterm")
	}
	const hostnameMark = "HOSTNAME=\x00"
	base = append(base, hostnameMark)
	overrides := slices.Clone(imageEnv)
	for _, kv := range podEnv {
		overrides = append(overrides, kv.name+"="+kv.value)
	}
	env := replaceOrAppendEnvValues(base, overrides)
	return slices.DeleteFunc(env, func(e string) bool { return e == hostnameMark })
}

// replaceOrAppendEnvValues is containerd pkg/oci's, exactly (including
// that an appended variable is not replaced by a later one).
func replaceOrAppendEnvValues(defaults, overrides []string) []string {
	cache := make(map[string]int, len(defaults))
	results := make([]string, 0, len(defaults))
	for i, e := range defaults {
		k, _, _ := strings.Cut(e, "=")
		results = append(results, e)
		cache[k] = i
	}
	for _, value := range overrides {
		k, _, ok := strings.Cut(value, "=")
		if !ok {
			if i, exists := cache[k]; exists {
				results[i] = ""
			}
			continue
		}
		if i, exists := cache[k]; exists {
			results[i] = value
		} else {
			results = append(results, value)
		}
	}
	return slices.DeleteFunc(results, func(e string) bool { return e == "" })
}

// user is the process's uid and gid. Kubelet sends runAsUser (the
// container's, else the pod's, else the image's numeric user) and
// runAsGroup (the container's, else the pod's) but never the image's group;
// containerd then looks the uid's group up in the /etc/passwd of the host's
// snapshot, which Cloak's guest-pull snapshotter leaves empty, so without
// runAsGroup the group is 0.
func user(p *podTemplate, c *corev1.Container, path string, img Image) (uid, gid uint32, warnings []string, err error) {
	var runAsUser, runAsGroup *int64
	var runAsNonRoot *bool
	if psc := p.spec.SecurityContext; psc != nil {
		runAsUser, runAsGroup, runAsNonRoot = psc.RunAsUser, psc.RunAsGroup, psc.RunAsNonRoot
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			runAsUser = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			runAsGroup = sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			runAsNonRoot = sc.RunAsNonRoot
		}
	}
	imgUser, imgGroup, hasGroup := strings.Cut(img.User, ":")
	switch {
	case runAsUser != nil:
		if *runAsUser < 0 || *runAsUser > 1<<31-1 {
			return 0, 0, nil, p.refuse(c.Name, path+".securityContext.runAsUser", "out of range", "use a uid from 0 to 2147483647")
		}
		uid = uint32(*runAsUser)
	case imgUser == "":
		if runAsGroup != nil {
			return 0, 0, nil, p.refuse(c.Name, path+".securityContext.runAsGroup", "runAsGroup without a user: the image names none and containerd refuses a group without a user", "set runAsUser as well")
		}
	default:
		n, perr := strconv.ParseUint(imgUser, 10, 31)
		if perr != nil {
			return 0, 0, nil, p.refuse(c.Name, path+".securityContext.runAsUser",
				fmt.Sprintf("image %s runs as user %q, a name that only the image's /etc/passwd can turn into a uid", c.Image, img.User),
				"set securityContext.runAsUser (and runAsGroup) to the numeric ids of that user")
		}
		uid = uint32(n)
		if hasGroup && runAsGroup == nil {
			warnings = append(warnings, fmt.Sprintf("%s: container %q: image user is %q but Kubernetes passes only the uid, so the process's group is 0; set securityContext.runAsGroup: %s to keep the image's group", p.ref(), c.Name, img.User, imgGroup))
		}
	}
	if runAsGroup != nil {
		if *runAsGroup < 0 || *runAsGroup > 1<<31-1 {
			return 0, 0, nil, p.refuse(c.Name, path+".securityContext.runAsGroup", "out of range", "use a gid from 0 to 2147483647")
		}
		gid = uint32(*runAsGroup)
	}
	if runAsNonRoot != nil && *runAsNonRoot && uid == 0 {
		return 0, 0, nil, p.refuse(c.Name, path+".securityContext.runAsNonRoot", "runAsNonRoot is set but the container runs as uid 0, so kubelet would refuse to start it", "set runAsUser to a non-zero uid")
	}
	return uid, gid, warnings, nil
}

// additionalGIDs is containerd's: the primary gid, the pod's fsGroup and
// supplementalGroups (kubelet sends fsGroup as a supplemental group), and
// the groups the image's /etc/group gives the user, which the host's empty
// snapshot does not have; merged, sorted, each once.
func additionalGIDs(gid uint32, psc *corev1.PodSecurityContext) []uint32 {
	set := map[uint32]bool{gid: true}
	if psc != nil {
		if psc.FSGroup != nil {
			set[uint32(*psc.FSGroup)] = true
		}
		for _, g := range psc.SupplementalGroups {
			set[uint32(g)] = true
		}
	}
	out := make([]uint32, 0, len(set))
	for g := range set {
		out = append(out, g)
	}
	slices.Sort(out)
	return out
}

// capabilities is containerd's CRI WithCapabilities over its default set:
// drop ALL empties it, then each added one is appended, each dropped one
// removed. add ALL would give the host containerd's own set, which depends
// on the host, so it is refused.
func capabilities(p *podTemplate, c *corev1.Container, path string) ([]string, error) {
	caps := slices.Clone(defaultCapabilities)
	if c.SecurityContext == nil || c.SecurityContext.Capabilities == nil {
		return caps, nil
	}
	cc := c.SecurityContext.Capabilities
	check := func(list []corev1.Capability, field string) error {
		for i, n := range list {
			s := string(n)
			if strings.HasPrefix(strings.ToUpper(s), "CAP_") {
				return p.refuse(c.Name, fmt.Sprintf("%s.securityContext.capabilities.%s[%d]", path, field, i),
					fmt.Sprintf("capability %q: Kubernetes names capabilities without CAP_ (containerd would make it CAP_%s)", s, strings.ToUpper(s)),
					fmt.Sprintf("write %s", strings.ToUpper(s[4:])))
			}
			if s == "" || strings.Trim(strings.ToUpper(s), "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789") != "" {
				return p.refuse(c.Name, fmt.Sprintf("%s.securityContext.capabilities.%s[%d]", path, field, i),
					fmt.Sprintf("capability %q is not a capability name", s), "use names such as NET_ADMIN")
			}
		}
		return nil
	}
	if err := check(cc.Add, "add"); err != nil {
		return nil, err
	}
	if err := check(cc.Drop, "drop"); err != nil {
		return nil, err
	}
	for i, n := range cc.Add {
		if strings.EqualFold(string(n), "ALL") {
			return nil, p.refuse(c.Name, fmt.Sprintf("%s.securityContext.capabilities.add[%d]", path, i),
				"add ALL gives the container every capability the host's containerd has, which the policy cannot know", "list the capabilities the container needs")
		}
	}
	if slices.ContainsFunc(cc.Drop, func(n corev1.Capability) bool { return strings.EqualFold(string(n), "ALL") }) {
		caps = nil
	}
	for _, n := range cc.Add {
		if name := "CAP_" + strings.ToUpper(string(n)); !slices.Contains(caps, name) {
			caps = append(caps, name)
		}
	}
	for _, n := range cc.Drop {
		name := "CAP_" + strings.ToUpper(string(n))
		caps = slices.DeleteFunc(caps, func(c string) bool { return c == name })
	}
	if caps == nil {
		caps = []string{}
	}
	return caps, nil
}

// mounts are the container's volume mounts as kubelet makes them:
// read-only as declared, and always for configMap, secret, projected and
// downwardAPI volumes (their plugins are read-only), plus the service
// account token that admission adds unless automountServiceAccountToken is
// false.
func mounts(p *podTemplate, c *corev1.Container, path string) ([]agentpolicy.Mount, error) {
	out := []agentpolicy.Mount{}
	hasToken := false
	for i, vm := range c.VolumeMounts {
		var vol *corev1.Volume
		for j := range p.spec.Volumes {
			if p.spec.Volumes[j].Name == vm.Name {
				vol = &p.spec.Volumes[j]
			}
		}
		if vol == nil {
			return nil, p.refuse(c.Name, fmt.Sprintf("%s.volumeMounts[%d]", path, i), fmt.Sprintf("no volume named %q", vm.Name), "add it to the pod's volumes or fix the name")
		}
		kind := volumeKind(vol)
		ro := vm.ReadOnly || kind != agentpolicy.MountEmptyDir
		out = append(out, agentpolicy.Mount{Destination: vm.MountPath, Kind: kind, ReadOnly: ro})
		hasToken = hasToken || vm.MountPath == ServiceAccountTokenPath
	}
	if automount := p.spec.AutomountServiceAccountToken; !hasToken && (automount == nil || *automount) {
		out = append(out, agentpolicy.Mount{Destination: ServiceAccountTokenPath, Kind: agentpolicy.MountServiceAccountToken, ReadOnly: true})
	}
	return out, nil
}

// execCommands are the argvs kubelet execs in the container: exec probes
// (with $(VAR) expanded against the plain env values, as kubelet's prober
// does) and exec lifecycle hooks (as written), each once.
func execCommands(c *corev1.Container) [][]string {
	static := map[string]string{}
	for _, e := range c.Env {
		static[e.Name] = e.Value
	}
	out := [][]string{}
	add := func(cmd []string) {
		if len(cmd) == 0 || slices.ContainsFunc(out, func(o []string) bool { return slices.Equal(o, cmd) }) {
			return
		}
		out = append(out, cmd)
	}
	for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if pr != nil && pr.Exec != nil {
			add(expandAll(pr.Exec.Command, static))
		}
	}
	if lc := c.Lifecycle; lc != nil {
		for _, h := range []*corev1.LifecycleHandler{lc.PostStart, lc.PreStop} {
			if h != nil && h.Exec != nil {
				add(slices.Clone(h.Exec.Command))
			}
		}
	}
	return out
}

// dotSysctl is kubelet's ConvertSysctlVariableToDotsSeparator: a name
// whose first separator is / uses / between parts and . within them.
func dotSysctl(s string) string {
	i := strings.IndexAny(s, "./")
	if i < 0 || s[i] == '.' {
		return s
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '/':
			return '.'
		case '.':
			return '/'
		}
		return r
	}, s)
}
