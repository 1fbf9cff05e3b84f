// Fuzz targets for every request hostinput validates. This package has no
// TestMain, so each fuzz worker starts at once (the agent's, which builds a
// busybox rootfs, ran 5 inputs in 7 s). Rates seen with
// go test -run xxx -fuzz=FuzzX -fuzztime=6s ./guest-image/hostinput on the
// shared 2-core machine:
//	FuzzContainerSpec    18613 execs in 6 s (~3100/s)
//	FuzzExecProcess      29372 execs in 6 s (~4900/s)
//	FuzzLinuxResources   25858 execs in 6 s (~4300/s)
//	FuzzContainerFiles   33052 execs in 6 s (~5500/s)
//	FuzzSandbox          52530 execs in 6 s (~8800/s)

package hostinput

import (
	"encoding/json"
	"path"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// FuzzContainerSpec: any host spec either is refused with a reason or
// yields a spec with none of what the host must not control.
func FuzzContainerSpec(f *testing.F) {
	base, _ := json.Marshal(baseSpec())
	f.Add(base)
	hooked := baseSpec()
	hooked.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/sh"}}}
	b, _ := json.Marshal(hooked)
	f.Add(b)
	f.Add([]byte(`{"process":{"args":["a"]},"linux":{"namespaces":[{"type":"mount"}]},"mounts":[{"destination":"/x","type":"bind","source":"/run/cloak/sandbox/a"}]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		s, err := ContainerSpec("pod1", "c1", raw, testImage, numericUsers, testRules)
		if err != nil {
			if reasonOf(err) == "" {
				t.Fatalf("refusal without a reason: %v", err)
			}
			return
		}
		if s.Root.Path != "rootfs" || s.Linux.CgroupsPath != "/cloak/pod1/c1" || len(s.Process.Args) == 0 {
			t.Fatalf("accepted spec keeps host control: root %+v cgroup %q args %q", s.Root, s.Linux.CgroupsPath, s.Process.Args)
		}
		//lint:ignore SA1019 a host may still send the deprecated prestart hooks, and they must be refused like the others
		if h := s.Hooks; h != nil && len(h.Prestart)+len(h.CreateRuntime)+len(h.CreateContainer)+len(h.StartContainer)+len(h.Poststart)+len(h.Poststop) > 0 {
			t.Fatal("accepted spec has hooks")
		}
		for _, ns := range s.Linux.Namespaces {
			if ns.Path != "" {
				t.Fatalf("accepted namespace path %q", ns.Path)
			}
		}
		for _, m := range s.Mounts {
			if checkMount(m, testRules) != nil {
				t.Fatalf("accepted mount %+v", m)
			}
		}
	})
}

func FuzzExecProcess(f *testing.F) {
	f.Add([]byte(`{"args":["/bin/sh","-c","echo hi"],"cwd":"/","env":["PATH=/bin"]}`))
	f.Add([]byte(`{"args":[],"terminal":true,"consoleSize":{"height":99999,"width":1}}`))
	f.Add([]byte(`{"args":["x"],"cwd":"rel"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := ExecProcess("c1", "e1", raw)
		if err != nil {
			if reasonOf(err) != agentapi.ReasonInvalidRequest {
				t.Fatalf("refusal without INVALID_REQUEST: %v", err)
			}
			return
		}
		if len(p.Args) == 0 || !strings.HasPrefix(p.Cwd, "/") {
			t.Fatalf("accepted process %+v", p)
		}
	})
}

func FuzzLinuxResources(f *testing.F) {
	f.Add([]byte(`{"memory":{"limit":104857600},"pids":{"limit":64},"cpu":{"shares":512}}`))
	f.Add([]byte(`{"devices":[{"allow":true,"access":"rwm"}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := LinuxResources("c1", raw)
		if err != nil {
			if reasonOf(err) == "" {
				t.Fatalf("refusal without a reason: %v", err)
			}
			return
		}
		if len(r.Devices) > 0 {
			t.Fatal("accepted device rules")
		}
	})
}

// FuzzContainerFiles: whatever files the host sends, those accepted are
// clean relative paths, each once, within the limits, and every link stays
// below itself. (The agent writes them through an os.Root, so even a link
// that slipped through could not lead a write out: agent's TestWriteFiles.)
func FuzzContainerFiles(f *testing.F) {
	seed, _ := proto.Marshal(&agentapi.CreateContainerRequest{Files: kubeletFiles()})
	f.Add(seed)
	bad, _ := proto.Marshal(&agentapi.CreateContainerRequest{Files: []*agentapi.ContainerFile{{Path: "m0", Symlink: ".."}, {Path: "m0/x", Data: []byte("x")}}})
	f.Add(bad)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var req agentapi.CreateContainerRequest
		if proto.Unmarshal(raw, &req) != nil {
			return
		}
		if err := ContainerFiles(req.GetFiles()); err != nil {
			if reasonOf(err) == "" {
				t.Fatalf("refusal without a reason: %v", err)
			}
			return
		}
		if len(req.GetFiles()) > maxContainerFiles {
			t.Fatalf("accepted %d files", len(req.GetFiles()))
		}
		seen := map[string]bool{}
		for _, file := range req.GetFiles() {
			p := file.GetPath()
			if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") || seen[p] {
				t.Fatalf("accepted path %q", p)
			}
			seen[p] = true
			if l := file.GetSymlink(); l != "" && (!agentapi.DescendingLink(l) || len(file.GetData()) > 0 || file.GetDir()) {
				t.Fatalf("accepted link %q -> %q", p, l)
			}
		}
	})
}

// FuzzSandbox: any CreateSandbox is refused with INVALID_REQUEST or yields
// a network that is safe to write into resolv.conf and hand to netlink.
func FuzzSandbox(f *testing.F) {
	for _, req := range []*agentapi.CreateSandboxRequest{
		{SandboxId: "pod1", Hostname: "pod-1", DnsServers: []string{"10.0.2.3"}, DnsSearches: []string{"svc.local"},
			Interfaces: []*agentapi.Interface{{Name: "eth0", Mac: "02:00:00:00:00:01", Addresses: []string{"10.0.2.15/24"}, Mtu: 1500}},
			Routes:     []*agentapi.Route{{Destination: "default", Gateway: "10.0.2.2"}},
			Sysctls:    map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}},
		{SandboxId: "p", Interfaces: []*agentapi.Interface{{Name: "e", Addresses: []string{"fd00::1/64"}}},
			Routes: []*agentapi.Route{{Destination: "fd00::/8", Device: "e"}}, SharedFsTag: "cloak"},
	} {
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		// Bounded like a message the agent's gRPC server would take, and
		// small enough to keep every input fast.
		if len(raw) > 64<<10 {
			return
		}
		var req agentapi.CreateSandboxRequest
		if proto.Unmarshal(raw, &req) != nil {
			return
		}
		cfg, err := Sandbox(&req)
		if err != nil {
			if reasonOf(err) != agentapi.ReasonInvalidRequest {
				t.Fatalf("refusal without INVALID_REQUEST: %v", err)
			}
			return
		}
		n := cfg.Network
		if strings.ContainsAny(n.Hostname+strings.Join(n.DNSSearches, ""), " \n\t/\x00") || len(n.DNSServers) > maxDNSServers {
			t.Fatalf("accepted unsafe names %+v", n)
		}
		for _, ifc := range n.Interfaces {
			if len(ifc.Name) > 15 || strings.ContainsAny(ifc.Name, "/ \x00") {
				t.Fatalf("accepted interface name %q", ifc.Name)
			}
		}
		for _, r := range n.Routes {
			if !r.Destination.IsValid() && !r.Gateway.IsValid() {
				t.Fatalf("accepted a default route without gateway")
			}
		}
		for _, sc := range n.Sysctls {
			if !strings.HasPrefix(sc.Key, "net.") || strings.Contains(sc.Key, "/") || strings.Contains(sc.Key, "..") || strings.ContainsAny(sc.Value, "\n\x00") {
				t.Fatalf("accepted sysctl %q=%q", sc.Key, sc.Value)
			}
		}
	})
}
