package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/agentpolicy"
	"github.com/cloak-containers/cloak/api/agentapi"
	emulatedsnp "github.com/cloak-containers/cloak/emulated/snp"
	"github.com/cloak-containers/cloak/internal/testutil"
)

// policyContainerSpec is the spec the policy of TestAgentPolicyHostileHost
// pins (containerSpec with CRI's annotations and kubelet's masked paths),
// with a change applied.
func policyContainerSpec(t *testing.T, change func(*specs.Spec)) []byte {
	return containerSpecWith(t, func(s *specs.Spec) {
		s.Annotations = map[string]string{
			"io.kubernetes.cri.container-name": "app", "io.kubernetes.cri.container-type": "container",
			"io.kubernetes.cri.sandbox-name": "cloak-vmtest", "io.kubernetes.cri.sandbox-namespace": "default",
		}
		s.Linux.MaskedPaths = []string{"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
			"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"}
		s.Linux.ReadonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
		if change != nil {
			change(s)
		}
	}, "sh", "-c", "echo policy-ok; exec sleep 600")
}

// execSpec is the process of an exec into the policy's container: the
// container's own, with argv (as containerd's CRI builds it), changed.
func execSpec(t *testing.T, change func(*specs.Process), args ...string) []byte {
	var s specs.Spec
	if err := json.Unmarshal(policyContainerSpec(t, nil), &s); err != nil {
		t.Fatal(err)
	}
	p := *s.Process
	p.Args = args
	if change != nil {
		change(&p)
	}
	return mustJSON(t, p)
}

// TestAgentPolicyHostileHost boots an emulated SEV-SNP guest whose launch
// initdata carries a generated agent policy, and plays a hostile host
// against its real agent API: each request the policy does not allow is
// refused with POLICY_DENIED and its reason, and changes nothing in the
// guest; what the policy declares still works.
func TestAgentPolicyHostileHost(t *testing.T) {
	reg := startRegistry(t)
	layer, err := tarball.LayerFromOpener(testutil.BytesOpener(busyboxTar(t)), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	img := busyboxImage(t, layer, mutate.Addendum{})
	ref := reg + "/policy/app:1"
	push(t, ref, img)
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	// The same files under another config: another manifest digest.
	other := busyboxImage(t, layer, mutate.Addendum{History: v1.History{CreatedBy: "another build"}})
	otherRef := reg + "/policy/app:other"
	push(t, otherRef, other)

	data := agentpolicy.Data{
		Sandbox: agentpolicy.Sandbox{Name: "^cloak-vmtest$", Hostname: "^cloak-vmtest$", Namespace: "default"},
		Containers: []agentpolicy.Container{{
			Name: "app", Image: ref, ImageDigest: digest.String(),
			Args: []string{"sh", "-c", "echo policy-ok; exec sleep 600"}, Env: []string{"PATH=/bin"}, WorkingDir: "/",
			Capabilities: []string{"CAP_KILL", "CAP_CHOWN"}, NoNewPrivileges: true,
			ExecCommands: [][]string{{"cat", "/etc/hostname"}},
		}},
	}
	policy, err := agentpolicy.Module(data)
	if err != nil {
		t.Fatal(err)
	}
	initdata := append([]byte(strings.TrimSuffix(string(emulatedInitdata("agent policy")), allowAllPolicyEntry)),
		"\"policy.rego\" = '''\n"+string(policy)+"'''\n"...)

	root, err := emulatedsnp.LoadOrCreate(filepath.Join(t.TempDir(), "emulated-snp"))
	if err != nil {
		t.Fatal(err)
	}
	vm, _, _ := bootEmulatedSNP(t, root, initdata)
	c := connectAgent(t, vm)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	denied := func(what string, err error, want string) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: allowed, want refused by the policy (%q)", what, want)
			return
		}
		if status.Code(err) != codes.PermissionDenied || reasonOf(err) != agentapi.ReasonPolicy || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v (reason %q), want PermissionDenied POLICY_DENIED with %q", what, err, reasonOf(err), want)
			return
		}
		t.Logf("%s: refused: %s", what, status.Convert(err).Message())
	}

	// 1. A network set-up that touches lo is refused before anything of it
	// is applied; the same sandbox without it is created.
	hostile := sandboxRequest(initdata)
	hostile.Routes = append(hostile.Routes, &agentapi.Route{Destination: "127.0.0.0/8", Device: "lo"})
	_, err = c.CreateSandbox(ctx, hostile)
	denied("CreateSandbox with a route on lo", err, "CreateSandbox denied by the pod's agent policy: route")
	renamed := sandboxRequest(initdata)
	renamed.Hostname = "other-pod"
	_, err = c.CreateSandbox(ctx, renamed)
	denied("CreateSandbox with another hostname", err, `hostname "other-pod"`)
	if _, err := c.CreateSandbox(ctx, sandboxRequest(initdata)); err != nil {
		t.Fatalf("CreateSandbox as declared: %v", err)
	}
	for _, r := range []string{ref, otherRef} {
		if _, err := c.PullImage(ctx, &agentapi.PullImageRequest{Image: r, Registry: registryOptions(reg)}); err != nil {
			t.Fatalf("PullImage %s: %v", r, err)
		}
	}

	// The declared container runs.
	var out bytes.Buffer
	if _, err := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "app", Image: ref, OciSpec: policyContainerSpec(t, nil)}); err != nil {
		t.Fatalf("CreateContainer as declared: %v", err)
	}
	attached := make(chan error, 1)
	go func() { attached <- c.Attach(ctx, "app", "", nil, &out, &out) }()
	if _, err := c.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: "app"}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	before, err := c.ListProcesses(ctx, &agentapi.ListProcessesRequest{ContainerId: "app"})
	if err != nil || len(before.GetPids()) == 0 {
		t.Fatalf("ListProcesses: %v %v", before, err)
	}

	// The declared probe runs, as the container's user, env and directory.
	if _, err := c.ExecProcess(ctx, &agentapi.ExecProcessRequest{ContainerId: "app", ExecId: "probe", Process: execSpec(t, nil, "cat", "/etc/hostname")}); err != nil {
		t.Fatalf("ExecProcess of the declared probe: %v", err)
	}
	if _, err := c.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "app", ExecId: "probe"}); err != nil {
		t.Fatalf("WaitProcess of the probe: %v", err)
	}

	execs := []struct {
		what, container string
		process         []byte
		want            string
	}{
		{"exec of a shell", "app", execSpec(t, nil, "sh"), `exec is not allowed in container "app"; allowed: the declared probe and hook commands [["cat", "/etc/hostname"]]`},
		{"the probe as another user", "app", execSpec(t, func(p *specs.Process) { p.User.UID = 1000 }, "cat", "/etc/hostname"), "uid 1000 is not the declared 0"},
		{"the probe with LD_PRELOAD", "app", execSpec(t, func(p *specs.Process) { p.Env = append(p.Env, "LD_PRELOAD=/tmp/x.so") }, "cat", "/etc/hostname"), "environment differs"},
		{"the probe in another directory", "app", execSpec(t, func(p *specs.Process) { p.Cwd = "/etc" }, "cat", "/etc/hostname"), `working directory "/etc"`},
		{"exec into an unknown container", "nope", execSpec(t, nil, "cat", "/etc/hostname"), `container "nope" is not one this guest created`},
	}
	for i, e := range execs {
		_, err := c.ExecProcess(ctx, &agentapi.ExecProcessRequest{ContainerId: e.container, ExecId: "hostile" + string(rune('a'+i)), Process: e.process})
		denied("ExecProcess: "+e.what, err, e.want)
	}

	creates := []struct {
		what, image string
		spec        []byte
		want        string
	}{
		{"other args", ref, policyContainerSpec(t, func(s *specs.Spec) { s.Process.Args = []string{"cat", "/etc/recipe.txt"} }), `command ["cat", "/etc/recipe.txt"]`},
		{"an injected LD_PRELOAD", ref, policyContainerSpec(t, func(s *specs.Spec) { s.Process.Env = append(s.Process.Env, "LD_PRELOAD=/tmp/x.so") }), "LD_PRELOAD is not declared"},
		{"a hook", ref, policyContainerSpec(t, func(s *specs.Spec) { s.Hooks = &specs.Hooks{StartContainer: []specs.Hook{{Path: "/bin/sh"}}} }), "OCI hooks (startContainer)"},
		{"an extra mount", ref, policyContainerSpec(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "tmpfs", Source: "tmpfs"})
		}), "mount at /host is not declared"},
		{"a writable /sys", ref, policyContainerSpec(t, func(s *specs.Spec) { s.Mounts[4].Options = []string{"nosuid"} }), "mount at /sys must be read-only"},
		{"unmasked /proc paths", ref, policyContainerSpec(t, func(s *specs.Spec) { s.Linux.MaskedPaths = nil }), "must stay masked"},
		{"added capabilities", ref, policyContainerSpec(t, func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
		}), `bounding capabilities ["CAP_SYS_ADMIN"] are not declared`},
		{"another image digest", otherRef, policyContainerSpec(t, nil), "the policy pins " + ref + " at " + digest.String()},
		{"another sandbox name", ref, policyContainerSpec(t, func(s *specs.Spec) { s.Annotations["io.kubernetes.cri.sandbox-name"] = "victim" }), `pod name "victim"`},
	}
	for i, cr := range creates {
		id := "hostile-" + string(rune('a'+i))
		_, err := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: id, Image: cr.image, OciSpec: cr.spec})
		denied("CreateContainer with "+cr.what, err, cr.want)
		if _, err := c.StatsContainer(ctx, &agentapi.StatsContainerRequest{ContainerId: id}); reasonOf(err) != agentapi.ReasonNotFound {
			t.Errorf("after the refused %s, container %s: %v (reason %q), want NOT_FOUND: something was left behind", cr.what, id, err, reasonOf(err))
		}
	}

	// Stdin to a container that declared none: the attach is allowed, the
	// first stdin chunk ends the call with the denial. A second instance of
	// the declared container (as a kubelet restart would make) takes it.
	if _, err := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "app-restart", Image: ref, OciSpec: policyContainerSpec(t, nil)}); err != nil {
		t.Fatalf("CreateContainer of the same spec again (a restart): %v", err)
	}
	err = c.Attach(ctx, "app-restart", "", strings.NewReader("secret input\n"), nil, nil)
	denied("stdin written to a container without stdin", err, `stdin to container "app" is not declared`)
	if strings.Contains(err.Error(), "secret input") {
		t.Errorf("the denial echoes the stdin: %v", err)
	}

	// Nothing changed: the container runs the same processes, and printed
	// what it declared.
	after, err := c.ListProcesses(ctx, &agentapi.ListProcessesRequest{ContainerId: "app"})
	if err != nil || !slices.Equal(before.GetPids(), after.GetPids()) {
		t.Errorf("processes of app before %v, after %v (%v): the refusals changed the container", before.GetPids(), after.GetPids(), err)
	}
	if _, err := c.SignalProcess(ctx, &agentapi.SignalProcessRequest{ContainerId: "app", Signal: 9}); err != nil {
		t.Fatalf("SignalProcess: %v", err)
	}
	if err := <-attached; err != nil {
		t.Fatalf("stdio of app: %v", err)
	}
	if got := out.String(); got != "policy-ok\n" {
		t.Errorf("app printed %q, want %q", got, "policy-ok\n")
	}
}
