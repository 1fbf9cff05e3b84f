package agentpolicy

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// TestEveryRequestHasARule fails when an AgentService method has no rule in
// the generated policy's rules or in the allow-all policy, so that an RPC
// added later cannot bypass the gate (which denies a request without rule).
func TestEveryRequestHasARule(t *testing.T) {
	if len(Requests) < 19 {
		t.Fatalf("Requests lists %d messages, want every AgentService method (at least 19)", len(Requests))
	}
	gen, err := Module(demoData())
	if err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string][]byte{"rules.rego": gen, "allow-all.rego": []byte(AllowAll)} {
		p, err := Compile(src)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, r := range Requests {
			if !p.HasRule(r) {
				t.Errorf("%s has no rule %s: add one (deny by default unless the request is harmless)", name, r)
			}
		}
	}
}

func TestRequestOf(t *testing.T) {
	if got := RequestOf("/cloak.agent.v1.AgentService/ExecProcess"); got != "ExecProcessRequest" {
		t.Errorf("RequestOf(ExecProcess) = %q", got)
	}
	if got := RequestOf("/grpc.health.v1.Health/Check"); got != "" {
		t.Errorf("RequestOf(foreign) = %q, want empty", got)
	}
}

func TestCompileRefuses(t *testing.T) {
	for name, tc := range map[string]struct{ src, want string }{
		"other package": {"package policy\n", "package agent_policy"},
		"syntax":        {"package agent_policy\nallow if {", "does not parse"},
		"http.send":     {"package agent_policy\nimport rego.v1\nx := http.send({})\n", "http.send"},
		"too large":     {"package agent_policy\n" + strings.Repeat("#", MaxSourceSize), "limit"},
	} {
		_, err := Compile([]byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
}

const demoDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func demoData() Data {
	return Data{
		Sandbox: Sandbox{Name: "^confidential$", Hostname: "^confidential$", Namespace: "cloak-demo"},
		Containers: []Container{{
			Name: "app", Image: "127.0.0.1:5000/demo/hello:encrypted", ImageDigest: demoDigest,
			Args: []string{"/app/run.sh"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			WorkingDir: "/", AdditionalGIDs: []uint32{0},
			Capabilities: []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID",
				"CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"},
			Stdin:        false,
			ExecCommands: [][]string{{"cat", "/tmp/healthy"}},
			Mounts:       []Mount{{Destination: "/etc/config", Kind: MountConfigMap, ReadOnly: true}},
		}},
	}
}

func demoPolicy(t testing.TB, mutate func(*Data)) *Policy {
	t.Helper()
	d := demoData()
	if mutate != nil {
		mutate(&d)
	}
	src, err := Module(d)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// demoCreate is the CreateContainer request the shim sent for make demo's
// container (captured from a run, testdata/create-demo.json), with kubelet's
// masked and read-only paths, which crictl's config did not carry.
func demoCreate(t testing.TB, mutate func(*specs.Spec, *agentapi.CreateContainerRequest)) *agentapi.CreateContainerRequest {
	t.Helper()
	raw, err := os.ReadFile("testdata/create-demo.json")
	if err != nil {
		t.Fatal(err)
	}
	req := &agentapi.CreateContainerRequest{}
	if err := protojson.Unmarshal(raw, req); err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(req.OciSpec, &s); err != nil {
		t.Fatal(err)
	}
	s.Linux.MaskedPaths = []string{"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
		"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"}
	s.Linux.ReadonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
	if mutate != nil {
		mutate(&s, req)
	}
	if req.OciSpec, err = json.Marshal(&s); err != nil {
		t.Fatal(err)
	}
	return req
}

func decide(t testing.TB, p *Policy, req proto.Message, guest map[string]any) Decision {
	t.Helper()
	in, err := Input(req, guest)
	if err != nil {
		t.Fatal(err)
	}
	name := string(req.ProtoReflect().Descriptor().Name())
	d, err := p.Decide(context.Background(), name, in)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// wantDecision checks a decision: allowed when want is "", else denied with
// a reason that contains want.
func wantDecision(t *testing.T, d Decision, want string) {
	t.Helper()
	if want == "" != d.Allowed {
		t.Fatalf("allowed = %v, reasons %q, want %q", d.Allowed, d.Reasons, want)
	}
	if want != "" && !slices.ContainsFunc(d.Reasons, func(r string) bool { return strings.Contains(r, want) }) {
		t.Fatalf("reasons %q, want one with %q", d.Reasons, want)
	}
}

func TestCreateContainer(t *testing.T) {
	p := demoPolicy(t, nil)
	guest := map[string]any{"image_digest": demoDigest}
	configMap := func(s *specs.Spec, r *agentapi.CreateContainerRequest) {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/config", Type: "bind", Options: []string{"rbind", "ro"}})
		r.MountSources = append(r.MountSources, &agentapi.MountSource{MountIndex: uint32(len(s.Mounts) - 1), Source: &agentapi.MountSource_Files{Files: "m10"}})
		r.Files = append(r.Files, &agentapi.ContainerFile{Path: "m10", Dir: true}, &agentapi.ContainerFile{Path: "m10/key", Data: []byte("s3cret")})
	}
	for _, tc := range []struct {
		name   string
		mutate func(*specs.Spec, *agentapi.CreateContainerRequest)
		guest  map[string]any
		want   string // "" = allowed; else a substring of a reason
	}{
		{name: "as declared"},
		{name: "with its configMap", mutate: configMap},
		{name: "kubelet's env", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Process.Env = append(s.Process.Env, "KUBERNETES_SERVICE_HOST=10.0.0.1", "WEB_SERVICE_PORT=80", "WEB_PORT_80_TCP_ADDR=10.0.0.2")
		}},
		{name: "another command", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Process.Args = []string{"sh", "-c", "cat /secret"}
		},
			want: `command ["sh", "-c", "cat /secret"] is not the declared ["/app/run.sh"]`},
		{name: "LD_PRELOAD", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Process.Env = append(s.Process.Env, "LD_PRELOAD=/tmp/evil.so")
		}, want: "environment variable LD_PRELOAD is not declared"},
		{name: "declared env removed", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) { s.Process.Env = s.Process.Env[1:] },
			want: "declared environment variable PATH is missing"},
		{name: "other image digest", guest: map[string]any{"image_digest": "sha256:" + strings.Repeat("f", 64)}, want: "the policy pins"},
		{name: "image not pulled", guest: map[string]any{}, want: `manifest digest ""`},
		{name: "another pod name", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Annotations["io.kubernetes.cri.sandbox-name"] = "other"
		}, want: `pod name "other"`},
		{name: "another namespace", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Annotations["io.kubernetes.cri.sandbox-namespace"] = "kube-system"
		}, want: `pod namespace "kube-system"`},
		{name: "undeclared container", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Annotations["io.kubernetes.cri.container-name"] = "debug"
		}, want: `container "debug" is not in the pod's policy`},
		{name: "hooks", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/sh"}}}
		}, want: "OCI hooks (createRuntime)"},
		{name: "extra mount", mutate: func(s *specs.Spec, r *agentapi.CreateContainerRequest) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/run/secrets/extra", Type: "bind"})
			r.MountSources = append(r.MountSources, &agentapi.MountSource{MountIndex: uint32(len(s.Mounts) - 1), Source: &agentapi.MountSource_Files{Files: "m6"}})
		}, want: "mount at /run/secrets/extra is not declared"},
		{name: "configMap writable", mutate: func(s *specs.Spec, r *agentapi.CreateContainerRequest) {
			configMap(s, r)
			s.Mounts[len(s.Mounts)-1].Options = []string{"rbind", "rw"}
		}, want: "declared read-only but requested writable"},
		{name: "configMap from the host share", mutate: func(s *specs.Spec, r *agentapi.CreateContainerRequest) {
			configMap(s, r)
			r.MountSources[len(r.MountSources)-1].Source = &agentapi.MountSource_Shared{Shared: "x"}
		}, want: "is backed by shared"},
		{name: "writable sysfs", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) { s.Mounts[4].Options = []string{"nosuid"} },
			want: "mount at /sys must be read-only"},
		{name: "proc replaced by a bind", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) { s.Mounts[0].Type = "tmpfs" },
			want: "mount at /proc is tmpfs, want proc"},
		{name: "unmasked /proc", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) { s.Linux.MaskedPaths = s.Linux.MaskedPaths[3:] },
			want: `paths ["/proc/acpi", "/proc/asound", "/proc/kcore"] must stay masked`},
		{name: "writable /proc/sys", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) { s.Linux.ReadonlyPaths = nil },
			want: "must stay read-only"},
		{name: "added capability", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Process.Capabilities.Effective = append(s.Process.Capabilities.Effective, "CAP_SYS_ADMIN")
		}, want: `effective capabilities ["CAP_SYS_ADMIN"] are not declared`},
		{name: "another user", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) { s.Process.User.UID = 1000 },
			want: "uid 1000 is not the declared 0"},
		{name: "extra group", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Process.User.AdditionalGids = []uint32{0, 6}
		},
			want: "additional groups [6]"},
		{name: "other cwd", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) { s.Process.Cwd = "/tmp" },
			want: `working directory "/tmp"`},
		{name: "terminal", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) { s.Process.Terminal = true },
			want: "terminal true is not the declared tty false"},
		{name: "device", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/mem", Type: "c", Major: 1, Minor: 1}}
		}, want: "device nodes"},
		{name: "host namespace", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: "network", Path: "/proc/1/ns/net"})
		}, want: "joining the network namespace"},
		{name: "no pid namespace", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) { s.Linux.Namespaces = s.Linux.Namespaces[1:] },
			want: "its own pid namespace"},
		{name: "sysctl", mutate: func(s *specs.Spec, _ *agentapi.CreateContainerRequest) {
			s.Linux.Sysctl = map[string]string{"kernel.msgmax": "1"}
		},
			want: "sysctls"},
		{name: "file outside any mount", mutate: func(_ *specs.Spec, r *agentapi.CreateContainerRequest) {
			r.Files = append(r.Files, &agentapi.ContainerFile{Path: "m99/evil", Data: []byte("x")})
		}, want: `file "m99/evil" is not the source of any mount`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := guest
			if tc.guest != nil {
				g = tc.guest
			}
			d := decide(t, p, demoCreate(t, tc.mutate), g)
			wantDecision(t, d, tc.want)
			for _, r := range d.Reasons {
				if strings.Contains(r, "s3cret") {
					t.Fatalf("a reason echoes a file's content: %q", r)
				}
			}
		})
	}
}

func demoGuestContainer(t testing.TB) map[string]any {
	t.Helper()
	var s map[string]any
	if err := json.Unmarshal(demoCreate(t, nil).OciSpec, &s); err != nil {
		t.Fatal(err)
	}
	return map[string]any{"name": "app", "process": s["process"]}
}

func TestExecProcess(t *testing.T) {
	p := demoPolicy(t, nil)
	debug := demoPolicy(t, func(d *Data) { d.Containers[0].AllowExec = true })
	probe := func(mutate func(*specs.Process)) *agentapi.ExecProcessRequest {
		var s specs.Spec
		_ = json.Unmarshal(demoCreate(t, nil).OciSpec, &s)
		proc := *s.Process
		proc.Args = []string{"cat", "/tmp/healthy"}
		if mutate != nil {
			mutate(&proc)
		}
		raw, _ := json.Marshal(&proc)
		return &agentapi.ExecProcessRequest{ContainerId: "c1", ExecId: "e1", Process: raw}
	}
	guest := map[string]any{"container": demoGuestContainer(t)}
	for _, tc := range []struct {
		name   string
		policy *Policy
		req    *agentapi.ExecProcessRequest
		guest  map[string]any
		want   string
	}{
		{name: "the probe", req: probe(nil)},
		{name: "a shell", req: probe(func(p *specs.Process) { p.Args = []string{"sh"} }),
			want: `exec is not allowed in container "app"; allowed: the declared probe and hook commands [["cat", "/tmp/healthy"]]`},
		{name: "a shell, debug policy", policy: debug, req: probe(func(p *specs.Process) { p.Args = []string{"sh"} })},
		{name: "probe as another user", req: probe(func(p *specs.Process) { p.User.UID = 1000 }), want: "uid 1000"},
		{name: "probe with other env", req: probe(func(p *specs.Process) { p.Env = append(p.Env, "LD_PRELOAD=/x.so") }), want: "environment differs"},
		{name: "probe elsewhere", req: probe(func(p *specs.Process) { p.Cwd = "/tmp" }), want: `working directory "/tmp"`},
		{name: "probe with more capabilities", req: probe(func(p *specs.Process) { p.Capabilities.Bounding = append(p.Capabilities.Bounding, "CAP_SYS_ADMIN") }),
			want: "bounding capabilities"},
		{name: "unknown container", req: probe(nil), guest: map[string]any{}, want: `container "c1" is not one this guest created`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol, g := p, guest
			if tc.policy != nil {
				pol = tc.policy
			}
			if tc.guest != nil {
				g = tc.guest
			}
			d := decide(t, pol, tc.req, g)
			wantDecision(t, d, tc.want)
		})
	}
}

func TestProcessIOAndSandbox(t *testing.T) {
	p := demoPolicy(t, func(d *Data) { d.Sandbox.Sysctls = map[string]string{"net.ipv4.ip_forward": "1"} })
	guest := map[string]any{"container": demoGuestContainer(t)}
	stdin := &agentapi.ProcessIORequest{Msg: &agentapi.ProcessIORequest_Stdin{Stdin: []byte("password\n")}}
	attach := &agentapi.ProcessIORequest{Msg: &agentapi.ProcessIORequest_Attach_{Attach: &agentapi.ProcessIORequest_Attach{ContainerId: "c1"}}}
	sandbox := func(mutate func(*agentapi.CreateSandboxRequest)) *agentapi.CreateSandboxRequest {
		r := &agentapi.CreateSandboxRequest{SandboxId: "s1", Hostname: "confidential", Sysctls: map[string]string{"net.ipv4.ip_forward": "1"},
			Interfaces: []*agentapi.Interface{{Name: "eth0", Addresses: []string{"10.88.0.5/16"}}},
			Routes:     []*agentapi.Route{{Destination: "default", Gateway: "10.88.0.1", Device: "eth0"}}, Initdata: []byte("x")}
		if mutate != nil {
			mutate(r)
		}
		return r
	}
	for _, tc := range []struct {
		name string
		req  proto.Message
		want string
	}{
		{name: "attach", req: attach},
		{name: "stdin to a container without stdin", req: stdin, want: `stdin to container "app" is not declared`},
		{name: "sandbox as declared", req: sandbox(nil)},
		{name: "another hostname", req: sandbox(func(r *agentapi.CreateSandboxRequest) { r.Hostname = "x" }), want: `hostname "x"`},
		{name: "the pod's sysctl missing", req: sandbox(func(r *agentapi.CreateSandboxRequest) { r.Sysctls = nil }), want: `the pod's sysctl net.ipv4.ip_forward="1" is missing`},
		{name: "containerd's default sysctls", req: sandbox(func(r *agentapi.CreateSandboxRequest) {
			r.Sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
			r.Sysctls["net.ipv4.ping_group_range"] = "0 2147483647"
		})},
		{name: "another sysctl", req: sandbox(func(r *agentapi.CreateSandboxRequest) { r.Sysctls["net.ipv4.conf.all.route_localnet"] = "1" }),
			want: `sysctl net.ipv4.conf.all.route_localnet="1" is not the pod's`},
		{name: "route on lo", req: sandbox(func(r *agentapi.CreateSandboxRequest) {
			r.Routes = append(r.Routes, &agentapi.Route{Destination: "127.0.0.0/8", Device: "lo"})
		}), want: "touches the loopback"},
		{name: "route to 127.0.0.1 via eth0", req: sandbox(func(r *agentapi.CreateSandboxRequest) {
			r.Routes = append(r.Routes, &agentapi.Route{Destination: "127.0.0.1/32", Device: "eth0"})
		}), want: "touches the loopback"},
		{name: "lo reconfigured", req: sandbox(func(r *agentapi.CreateSandboxRequest) {
			r.Interfaces = append(r.Interfaces, &agentapi.Interface{Name: "lo", Addresses: []string{"10.0.0.1/8"}})
		}), want: "loopback interface lo"},
		{name: "loopback address on eth0", req: sandbox(func(r *agentapi.CreateSandboxRequest) { r.Interfaces[0].Addresses = []string{"127.0.0.2/8"} }),
			want: "is a loopback address"},
		{name: "host share", req: sandbox(func(r *agentapi.CreateSandboxRequest) { r.SharedFsTag = "cloak" }), want: "no host directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decide(t, p, tc.req, guest)
			wantDecision(t, d, tc.want)
			for _, r := range d.Reasons {
				if strings.Contains(r, "password") {
					t.Fatalf("a reason echoes stdin: %q", r)
				}
			}
		})
	}
}

func TestDecideWithoutRule(t *testing.T) {
	p, err := Compile([]byte("package agent_policy\nimport rego.v1\ndefault CheckRequest := true\n"))
	if err != nil {
		t.Fatal(err)
	}
	in, _ := Input(&agentapi.ExecProcessRequest{}, nil)
	if _, err := p.Decide(context.Background(), "ExecProcessRequest", in); !errors.Is(err, ErrNoRule) {
		t.Fatalf("err = %v, want ErrNoRule", err)
	}
	if _, err := p.Decide(context.Background(), "NoSuchRequest", in); !errors.Is(err, ErrNoRule) {
		t.Fatalf("err = %v, want ErrNoRule", err)
	}
}

// BenchmarkDecide is the policy's cost per request in the guest: go test
// -bench Decide ./agentpolicy (docs/perf.md).
func BenchmarkDecide(b *testing.B) {
	p := demoPolicy(b, nil)
	guestC := map[string]any{"container": demoGuestContainer(b)}
	var s specs.Spec
	_ = json.Unmarshal(demoCreate(b, nil).OciSpec, &s)
	s.Process.Args = []string{"cat", "/tmp/healthy"}
	proc, _ := json.Marshal(s.Process)
	for _, bc := range []struct {
		name  string
		req   proto.Message
		guest map[string]any
	}{
		{"CreateContainer", demoCreate(b, nil), map[string]any{"image_digest": demoDigest}},
		{"ExecProcess", &agentapi.ExecProcessRequest{ContainerId: "c1", ExecId: "e1", Process: proc}, guestC},
		{"ExecProcessDenied", &agentapi.ExecProcessRequest{ContainerId: "c1", ExecId: "e1", Process: []byte(`{"args":["sh"],"cwd":"/"}`)}, guestC},
		{"CreateSandbox", &agentapi.CreateSandboxRequest{SandboxId: "s1", Hostname: "confidential"}, nil},
		{"ProcessIOStdin", &agentapi.ProcessIORequest{Msg: &agentapi.ProcessIORequest_Stdin{Stdin: make([]byte, 32<<10)}}, guestC},
		{"WaitProcess", &agentapi.WaitProcessRequest{ContainerId: "c1"}, nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			name := string(bc.req.ProtoReflect().Descriptor().Name())
			ctx := context.Background()
			var took []time.Duration
			for b.Loop() {
				start := time.Now()
				in, err := Input(bc.req, bc.guest)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := p.Decide(ctx, name, in); err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(start))
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-us")
		})
	}
}

// FuzzDecide feeds hostile OCI specs through Input and the generated rules:
// no input may make evaluation fail or allow a spec whose argv is not the
// declared one.
func FuzzDecide(f *testing.F) {
	p := demoPolicy(f, nil)
	f.Add(demoCreate(f, nil).OciSpec)
	f.Add([]byte(`{"process":{"args":["/app/run.sh"]},"annotations":{"io.kubernetes.cri.container-name":"app"}}`))
	f.Add([]byte(`[]`))
	guest := map[string]any{"image_digest": demoDigest}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, spec []byte) {
		if len(spec) > 64<<10 {
			return
		}
		req := &agentapi.CreateContainerRequest{ContainerId: "c", Image: "i", OciSpec: spec}
		in, err := Input(req, guest)
		if err != nil {
			return // not JSON: the agent refuses it before the policy
		}
		d, err := p.Decide(ctx, "CreateContainerRequest", in)
		if err != nil {
			t.Fatalf("decide: %v", err)
		}
		if d.Allowed {
			var s struct {
				Process struct{ Args []string } `json:"process"`
			}
			if json.Unmarshal(spec, &s) != nil || !slices.Equal(s.Process.Args, []string{"/app/run.sh"}) {
				t.Fatalf("allowed a spec whose argv is not the declared one: %s", spec)
			}
		}
	})
}

// TestInputKeepsEveryField fails when a request that Input copies field by
// field (to leave out its large bytes) gains a field: Input must copy it
// too, or the policy would never see it.
func TestInputKeepsEveryField(t *testing.T) {
	for _, tc := range []struct {
		msg    proto.Message
		fields int
	}{
		{&agentapi.CreateSandboxRequest{}, 9},
		{&agentapi.CreateContainerRequest{}, 5},
		{&agentapi.ContainerFile{}, 5},
	} {
		d := tc.msg.ProtoReflect().Descriptor()
		if n := d.Fields().Len(); n != tc.fields {
			t.Errorf("%s has %d fields, Input copies %d: update Input (and this test)", d.Name(), n, tc.fields)
		}
	}
	in, err := Input(&agentapi.CreateContainerRequest{ContainerId: "c", Files: []*agentapi.ContainerFile{{Path: "m1/key", Data: []byte("s3cret")}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := in["files"].([]any)[0].(map[string]any)
	if f["path"] != "m1/key" || f["data"].(map[string]any)["size"] != 6 {
		t.Errorf("file input %v, want its path and size 6", f)
	}
	in, _ = Input(&agentapi.CreateSandboxRequest{Hostname: "h", Initdata: []byte("abc")}, nil)
	if in["hostname"] != "h" || in["initdata"].(map[string]any)["size"] != 3 {
		t.Errorf("sandbox input %v", in)
	}
}
