package hostinput

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// update rewrites golden files in testdata/.
var update = flag.Bool("update", false, "rewrite golden files in testdata/")

var testRules = SpecRules{BindDirs: []string{"/run/cloak/sandbox"}, BindFiles: []string{"/etc/resolv.conf"}}

var testImage = ocispec.ImageConfig{
	Env:        []string{"PATH=/usr/bin:/bin", "LANG=C"},
	Entrypoint: []string{"/entry"},
	Cmd:        []string{"serve"},
	WorkingDir: "/app",
	User:       "1000:1000",
}

// numericUsers stands in for the image's /etc/passwd: only "uid:gid".
func numericUsers(u string) (specs.User, error) {
	uid, gid, ok := strings.Cut(u, ":")
	a, err1 := strconv.ParseUint(uid, 10, 32)
	b, err2 := strconv.ParseUint(gid, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return specs.User{}, errors.New("not uid:gid")
	}
	return specs.User{UID: uint32(a), GID: uint32(b)}, nil
}

func baseSpec() *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{Cwd: "/", Env: []string{"LANG=en_US.UTF-8", "POD=web"}},
		Root:    &specs.Root{Path: "/var/lib/containerd/host/rootfs", Readonly: true},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/etc/resolv.conf", Type: "bind", Source: "/etc/resolv.conf", Options: []string{"rbind", "ro"}},
			{Destination: "/shared", Type: "bind", Source: "/run/cloak/sandbox/shm", Options: []string{"rbind"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: "/",
			Namespaces:  []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}},
		},
	}
}

// TestContainerSpecGolden pins the spec runc gets for a typical host spec:
// root replaced, cgroup chosen by the agent, image defaults merged.
func TestContainerSpecGolden(t *testing.T) {
	raw, _ := json.Marshal(baseSpec())
	s, err := ContainerSpec("pod1", "web", raw, testImage, numericUsers, testRules)
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	golden := filepath.Join("testdata", "merged-spec.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("merged spec differs from %s (go test -update rewrites it):\n%s", golden, got)
	}
}

func TestContainerSpecRefusals(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*specs.Spec)
		code   codes.Code
		reason string
		msg    string
	}{
		{"accepted", func(*specs.Spec) {}, codes.OK, "", ""},
		//lint:ignore SA1019 a host may still send the deprecated prestart hooks, and they must be refused like the others
		{"prestart hook", func(s *specs.Spec) { s.Hooks = &specs.Hooks{Prestart: []specs.Hook{{Path: "/x"}}} }, codes.PermissionDenied, agentapi.ReasonPolicy, "hooks"},
		{"poststop hook", func(s *specs.Spec) { s.Hooks = &specs.Hooks{Poststop: []specs.Hook{{Path: "/x"}}} }, codes.PermissionDenied, agentapi.ReasonPolicy, "hooks"},
		{"empty hooks", func(s *specs.Spec) { s.Hooks = &specs.Hooks{} }, codes.OK, "", ""},
		{"namespace path", func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/var/run/netns/x"})
		}, codes.PermissionDenied, agentapi.ReasonPolicy, "namespace"},
		{"no mount namespace", func(s *specs.Spec) { s.Linux.Namespaces = s.Linux.Namespaces[:1] }, codes.PermissionDenied, agentapi.ReasonPolicy, "mount namespace"},
		{"device", func(s *specs.Spec) { s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/vda", Type: "b", Major: 254}} }, codes.PermissionDenied, agentapi.ReasonPolicy, "devices"},
		{"host bind", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Source: "/var/lib/kubelet", Options: []string{"bind"}})
		}, codes.PermissionDenied, agentapi.ReasonPolicy, "bind source"},
		{"bind escaping the shared dir", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/run/cloak/sandbox/../images"})
		}, codes.PermissionDenied, agentapi.ReasonPolicy, "clean absolute"},
		{"bind of the shared dir itself", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/run/cloak/sandbox"})
		}, codes.PermissionDenied, agentapi.ReasonPolicy, "bind source"},
		{"disk filesystem", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "ext4", Source: "/dev/vda"})
		}, codes.PermissionDenied, agentapi.ReasonPolicy, "type"},
		{"relative destination", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "data", Type: "tmpfs", Source: "tmpfs"})
		}, codes.PermissionDenied, agentapi.ReasonPolicy, "absolute"},
		{"no process", func(s *specs.Spec) { s.Process = nil }, codes.InvalidArgument, agentapi.ReasonInvalidRequest, "no process"},
		{"no linux", func(s *specs.Spec) { s.Linux = nil }, codes.InvalidArgument, agentapi.ReasonInvalidRequest, "no linux"},
		{"relative cwd", func(s *specs.Spec) { s.Process.Cwd = "app" }, codes.InvalidArgument, agentapi.ReasonInvalidRequest, "cwd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := baseSpec()
			tt.mutate(s)
			raw, _ := json.Marshal(s)
			_, err := ContainerSpec("pod1", "c1", raw, testImage, numericUsers, testRules)
			if status.Code(err) != tt.code || reasonOf(err) != tt.reason || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Fatalf("got %v (reason %q), want %v %s mentioning %q", err, reasonOf(err), tt.code, tt.reason, tt.msg)
			}
		})
	}
}

func TestContainerSpecLimits(t *testing.T) {
	for _, raw := range [][]byte{nil, []byte("{"), []byte(`{"process": 5}`), make([]byte, agentapi.MaxMessageSize+1)} {
		if _, err := ContainerSpec("pod1", "c1", raw, testImage, numericUsers, testRules); reasonOf(err) != agentapi.ReasonInvalidRequest {
			t.Errorf("spec of %d bytes: %v, want INVALID_REQUEST", len(raw), err)
		}
	}
}

func TestApplySources(t *testing.T) {
	s := baseSpec()
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/hosts", Type: "bind", Options: []string{"rbind"}})
	raw, _ := json.Marshal(s)
	rules := testRules
	rules.Sources = map[int]string{3: "/run/cloak/containers/c1/files/m3"}
	got, err := ContainerSpec("pod1", "c1", raw, testImage, numericUsers, rules)
	if err != nil {
		t.Fatal(err)
	}
	if got.Mounts[3].Source != "/run/cloak/containers/c1/files/m3" {
		t.Errorf("source %q, want the guest path", got.Mounts[3].Source)
	}
	// Without a source, the empty bind source is refused.
	if _, err := ContainerSpec("pod1", "c1", raw, testImage, numericUsers, testRules); reasonOf(err) != agentapi.ReasonPolicy {
		t.Errorf("bind without source: %v, want POLICY_DENIED", err)
	}
	for _, bad := range []map[int]string{{9: "/x"}, {0: "/x"}} {
		rules.Sources = bad
		if _, err := ContainerSpec("pod1", "c1", raw, testImage, numericUsers, rules); reasonOf(err) != agentapi.ReasonInvalidRequest {
			t.Errorf("sources %v: %v, want INVALID_REQUEST (out of range / not a bind)", bad, err)
		}
	}
}

func TestMergeImageConfig(t *testing.T) {
	tests := []struct {
		name     string
		process  specs.Process
		image    ocispec.ImageConfig
		wantArgs []string
		wantEnv  []string
		wantCwd  string
		wantUID  uint32
	}{
		{"host args win", specs.Process{Args: []string{"/bin/sh"}, Env: []string{"A=host"}}, testImage,
			[]string{"/bin/sh"}, []string{"PATH=/usr/bin:/bin", "LANG=C", "A=host"}, "/app", 1000},
		{"image args", specs.Process{Env: []string{"LANG=host"}}, testImage,
			[]string{"/entry", "serve"}, []string{"PATH=/usr/bin:/bin", "LANG=host"}, "/app", 1000},
		{"host cwd and user win", specs.Process{Args: []string{"x"}, Cwd: "/work", User: specs.User{UID: 5}}, testImage,
			[]string{"x"}, []string{"PATH=/usr/bin:/bin", "LANG=C"}, "/work", 5},
		{"empty image", specs.Process{Args: []string{"x"}}, ocispec.ImageConfig{},
			[]string{"x"}, []string{defaultPath}, "/", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.process
			s := &specs.Spec{Process: &p}
			if err := mergeImageConfig(s, tt.image, numericUsers); err != nil {
				t.Fatal(err)
			}
			if strings.Join(p.Args, " ") != strings.Join(tt.wantArgs, " ") || strings.Join(p.Env, " ") != strings.Join(tt.wantEnv, " ") || p.Cwd != tt.wantCwd || p.User.UID != tt.wantUID {
				t.Fatalf("got args %q env %q cwd %q uid %d", p.Args, p.Env, p.Cwd, p.User.UID)
			}
		})
	}
}

func TestID(t *testing.T) {
	for id, ok := range map[string]bool{
		"c1": true, "A.b_c-9": true, strings.Repeat("a", 128): true,
		"": false, "-x": false, ".hidden": false, "../etc": false, "a/b": false, strings.Repeat("a", 129): false, "a b": false,
	} {
		if err := ID("container", id); (err == nil) != ok {
			t.Errorf("ID(%q) = %v, want ok=%v", id, err, ok)
		}
	}
}

// reasonOf is the agentapi reason an error carries.
func reasonOf(err error) string { return agentapi.ReasonOf(err) }
