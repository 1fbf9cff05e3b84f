package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// kubeletFiles is a configMap volume as the host copies it: kubelet's
// atomic-writer layout under m1, and a single file m0.
func kubeletFiles() []*agentapi.ContainerFile {
	return []*agentapi.ContainerFile{
		{Path: "m0", Mode: 0o644, Data: []byte("10.0.0.5 web\n")},
		{Path: "m1", Mode: 0o755, Dir: true},
		{Path: "m1/..2026_11_27", Mode: 0o755, Dir: true},
		{Path: "m1/..2026_11_27/app.conf", Mode: 0o600, Data: []byte("a=1\n")},
		{Path: "m1/..data", Mode: 0o777, Symlink: "..2026_11_27"},
		{Path: "m1/app.conf", Mode: 0o777, Symlink: "..data/app.conf"},
	}
}

func TestWriteFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "files")
	if err := writeFiles(dir, kubeletFiles()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "m1", "app.conf"))
	if err != nil || string(b) != "a=1\n" {
		t.Errorf("m1/app.conf through ..data: %q, %v", b, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "m1", "..data")); err != nil || target != "..2026_11_27" {
		t.Errorf("..data link: %q, %v", target, err)
	}
	st, err := os.Stat(filepath.Join(dir, "m1", "..2026_11_27", "app.conf"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("mode of app.conf: %v, %v; want 0600", st, err)
	}
	// A link the validation would refuse cannot lead writes out either.
	out := t.TempDir()
	bad := []*agentapi.ContainerFile{{Path: "m0", Symlink: out}, {Path: "m0/x", Data: []byte("escaped")}}
	if err := writeFiles(filepath.Join(t.TempDir(), "files"), bad); err == nil {
		t.Error("writeFiles followed a link out of its directory")
	}
	if _, err := os.Stat(filepath.Join(out, "x")); err == nil {
		t.Error("a file was written outside the files directory")
	}
}

func TestMountSources(t *testing.T) {
	srv := New(Config{StateDir: "/run/cloak", Puller: &fakePuller{}})
	c := &container{id: "c1", bundle: "/run/cloak/containers/c1"}
	good := &agentapi.CreateContainerRequest{
		Files: kubeletFiles(),
		MountSources: []*agentapi.MountSource{
			{MountIndex: 1, Source: &agentapi.MountSource_Files{Files: "m0"}},
			{MountIndex: 2, Source: &agentapi.MountSource_Files{Files: "m1"}},
			{MountIndex: 3, Source: &agentapi.MountSource_GuestDir{GuestDir: &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_EMPTY_DIR, Pod: "pod1", Volume: "cache"}}},
			{MountIndex: 4, Source: &agentapi.MountSource_GuestDir{GuestDir: &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_SHM, Pod: "pod1"}}},
		},
	}
	got, err := srv.mountSources(c, good)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]string{
		1: "/run/cloak/containers/c1/files/m0", 2: "/run/cloak/containers/c1/files/m1",
		3: "/run/cloak/sandbox/emptydir/pod1/cache", 4: "/run/cloak/sandbox/shm/pod1",
	}
	for i, p := range want {
		if got[i] != p {
			t.Errorf("mount %d: %q, want %q", i, got[i], p)
		}
	}

	// The requests hostinput.MountSources refuses are its tests; this one
	// needs the Server's state.
	src := func(s *agentapi.MountSource) *agentapi.CreateContainerRequest {
		return &agentapi.CreateContainerRequest{Files: kubeletFiles(), MountSources: []*agentapi.MountSource{s}}
	}
	tests := []struct {
		name string
		req  *agentapi.CreateContainerRequest
		code codes.Code
	}{
		{"shared without a share", src(&agentapi.MountSource{Source: &agentapi.MountSource_Shared{Shared: "c1/m3"}}), codes.FailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := srv.mountSources(c, tt.req); status.Code(err) != tt.code {
				t.Errorf("got %v, want code %v", err, tt.code)
			}
		})
	}
}

// TestContainerMounts runs a container with copied files, an emptyDir and
// the pod's /dev/shm, as the shim sends them for a CRI container.
func TestContainerMounts(t *testing.T) {
	ta := startAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := ta.client.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{SandboxId: "pod1", Hostname: "pod1"}); err != nil {
		t.Fatal(err)
	}
	<-ta.net.applied
	if _, err := ta.client.PullImage(ctx, &agentapi.PullImageRequest{Image: busyboxRef}); err != nil {
		t.Fatal(err)
	}
	bind := func(dst string, opts ...string) specs.Mount {
		return specs.Mount{Destination: dst, Type: "bind", Options: append([]string{"rbind"}, opts...)}
	}
	s := spec("sh", "-c", `cat /etc/hosts /cfg/app.conf; ls -A /cfg | tr '\n' ' '; echo;
touch /cache/new && echo cache-writable; echo x > /dev/shm/y && echo shm-writable; echo x > /cfg/z || echo cfg-read-only`)
	s.Mounts = append(s.Mounts, bind("/etc/hosts"), bind("/cfg", "ro"), bind("/cache"), bind("/dev/shm"))
	req := &agentapi.CreateContainerRequest{
		ContainerId: "mounts", Image: busyboxRef, OciSpec: mustJSON(t, s), Files: kubeletFiles(),
		MountSources: []*agentapi.MountSource{
			{MountIndex: 2, Source: &agentapi.MountSource_Files{Files: "m0"}},
			{MountIndex: 3, Source: &agentapi.MountSource_Files{Files: "m1"}},
			{MountIndex: 4, Source: &agentapi.MountSource_GuestDir{GuestDir: &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_EMPTY_DIR, Pod: "pod1", Volume: "cache"}}},
			{MountIndex: 5, Source: &agentapi.MountSource_GuestDir{GuestDir: &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_SHM, Pod: "pod1"}}},
		},
	}
	if _, err := ta.client.CreateContainer(ctx, req); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	done := ta.attach(ctx, t, "mounts", "", nil, false)
	if _, err := ta.client.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: "mounts"}); err != nil {
		t.Fatal(err)
	}
	w, err := ta.client.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "mounts"})
	if err != nil {
		t.Fatal(err)
	}
	out := <-done
	want := "10.0.0.5 web\na=1\n..2026_11_27 ..data app.conf \ncache-writable\nshm-writable\ncfg-read-only\n"
	if w.ExitStatus != 0 || out.stdout.String() != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want stdout %q", w.ExitStatus, out.stdout.String(), out.stderr.String(), want)
	}
	if _, err := os.Stat(filepath.Join(ta.stateDir, "sandbox", "emptydir", "pod1", "cache", "new")); err != nil {
		t.Errorf("the emptyDir is not the pod's guest directory: %v", err)
	}
	ta.remove(ctx, t, "mounts")

	// A host path the shim did not plan stays refused.
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/var/lib/data", Options: []string{"rbind"}})
	req.ContainerId, req.OciSpec = "unplanned", mustJSON(t, s)
	_, err = ta.client.CreateContainer(ctx, req)
	wantErr(t, "unplanned host bind", err, codes.PermissionDenied, agentapi.ReasonPolicy)
	if !strings.Contains(status.Convert(err).Message(), "/var/lib/data") {
		t.Errorf("refusal %q does not name the host path", status.Convert(err).Message())
	}
}
