package mounts

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cloak-containers/cloak/api/agentapi"
)

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// kubeletVolumeDir lays out a volume as kubelet's atomic writer does: the
// data in a timestamped directory, "..data" pointing at it, and one link
// per key through "..data".
func kubeletVolumeDir(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	ts := "..2026_11_27_10_00_00.123456789"
	for k, v := range files {
		write(t, filepath.Join(dir, ts, k), []byte(v))
		if err := os.Symlink("..data/"+k, filepath.Join(dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(ts, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

func bind(src, dst string, opts ...string) specs.Mount {
	return specs.Mount{Type: "bind", Source: src, Destination: dst, Options: append([]string{"rbind"}, opts...)}
}

func TestPlanKinds(t *testing.T) {
	tmp := t.TempDir()
	hosts := filepath.Join(tmp, "hosts")
	write(t, hosts, []byte("127.0.0.1 localhost\n"))
	big := filepath.Join(tmp, "big")
	write(t, big, bytes.Repeat([]byte("x"), MaxFileSize+1))
	pod := filepath.Join(tmp, "pods", "uid-1", "volumes")
	cm := filepath.Join(pod, "kubernetes.io~configmap", "cfg")
	kubeletVolumeDir(t, cm, map[string]string{"app.conf": "a=1\n"})
	empty := filepath.Join(pod, "kubernetes.io~empty-dir", "cache")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(tmp, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}

	spec := &specs.Spec{
		Annotations: map[string]string{AnnotationSandboxID: "pod-1"},
		Mounts: []specs.Mount{
			{Type: "proc", Source: "proc", Destination: "/proc"},
			bind(hosts, "/etc/hosts"),
			bind(cm, "/etc/app", "ro"),
			bind(empty, "/cache"),
			bind("/run/containerd/sandboxes/pod-1/shm", "/dev/shm"),
			{Type: "tmpfs", Source: "tmpfs", Destination: "/tmp"},
			bind(data, "/data", "ro"),
			bind(big, "/big"),
		},
	}
	orig := append([]specs.Mount(nil), spec.Mounts...)

	t.Run("shared", func(t *testing.T) {
		p, err := New("c1", spec, Options{Share: true})
		if err != nil {
			t.Fatal(err)
		}
		want := map[int]Kind{1: KindCopyFile, 2: KindCopyDir, 3: KindGuestDir, 4: KindGuestDir, 6: KindShare, 7: KindShare}
		if len(p.Mounts) != len(want) {
			t.Fatalf("planned %d mounts, want %d: %+v", len(p.Mounts), len(want), p.Mounts)
		}
		for _, m := range p.Mounts {
			if want[m.Index] != m.Kind {
				t.Errorf("mount %d (%s): kind %d, want %d", m.Index, m.Destination, m.Kind, want[m.Index])
			}
			if p.Spec.Mounts[m.Index].Source != "" {
				t.Errorf("mount %d keeps its host source %q in the guest spec", m.Index, p.Spec.Mounts[m.Index].Source)
			}
		}
		if p.Spec.Mounts[0].Source != "proc" || p.Spec.Mounts[5].Source != "tmpfs" {
			t.Errorf("kernel filesystems changed: %+v", p.Spec.Mounts)
		}
		for i := range orig {
			if spec.Mounts[i].Source != orig[i].Source {
				t.Errorf("New changed the caller's spec at mount %d", i)
			}
		}
		if m := p.Mounts[2]; m.GuestDir.GetKind() != agentapi.GuestDir_KIND_EMPTY_DIR || m.GuestDir.GetPod() != "pod-1" || m.GuestDir.GetVolume() != "cache" {
			t.Errorf("emptyDir: %+v", m.GuestDir)
		}
		if m := p.Mounts[3]; m.GuestDir.GetKind() != agentapi.GuestDir_KIND_SHM || !m.GuestDir.GetMemory() || m.GuestDir.GetPod() != "pod-1" {
			t.Errorf("shm: %+v", m.GuestDir)
		}
		if m := p.Mounts[4]; !m.ReadOnly || p.SharedPath(m) != "c1/m6" {
			t.Errorf("share: read-only %v, path %q; want true, c1/m6", m.ReadOnly, p.SharedPath(m))
		}
		if got := len(p.Shares()); got != 2 {
			t.Errorf("Shares: %d, want 2", got)
		}
		srcs := p.Sources()
		if srcs[0].GetFiles() != "m1" || srcs[1].GetFiles() != "m2" || srcs[4].GetShared() != "c1/m6" || srcs[2].GetGuestDir() == nil {
			t.Errorf("sources: %v", srcs)
		}
	})

	t.Run("refused", func(t *testing.T) {
		_, err := New("c1", spec, Options{NoShareReason: `tee = "emulated" is a confidential handler`})
		if err == nil {
			t.Fatal("a host directory was accepted without sharing")
		}
		for _, want := range []string{"/data", data, "host directory", `tee = "emulated"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		spec2 := &specs.Spec{Mounts: []specs.Mount{bind(big, "/big")}}
		if _, err := New("c1", spec2, Options{NoShareReason: "no"}); err == nil || !strings.Contains(err.Error(), "files up to 1048576 bytes are copied") {
			t.Errorf("large file: %v", err)
		}
	})

	t.Run("pod key without CRI", func(t *testing.T) {
		p, err := New("solo", &specs.Spec{Mounts: []specs.Mount{bind(empty, "/cache")}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Mounts[0].GuestDir.GetPod() != "solo" {
			t.Errorf("pod key %q, want the container id", p.Mounts[0].GuestDir.GetPod())
		}
	})

	t.Run("missing and relative sources", func(t *testing.T) {
		for _, m := range []specs.Mount{bind(filepath.Join(tmp, "nope"), "/x"), bind("rel/path", "/x")} {
			if _, err := New("c1", &specs.Spec{Mounts: []specs.Mount{m}}, Options{Share: true}); err == nil || !strings.Contains(err.Error(), "mount /x") {
				t.Errorf("source %q: error %v, want one naming the mount", m.Source, err)
			}
		}
	})
}

func TestCollect(t *testing.T) {
	tmp := t.TempDir()
	hosts := filepath.Join(tmp, "hosts")
	write(t, hosts, []byte("10.0.0.1 pod\n"))
	cm := filepath.Join(tmp, "pods", "u", "volumes", "kubernetes.io~secret", "creds")
	kubeletVolumeDir(t, cm, map[string]string{"user": "admin", "pass": "s3cret"})
	spec := &specs.Spec{Mounts: []specs.Mount{bind(hosts, "/etc/hosts"), bind(cm, "/creds", "ro")}}
	p, err := New("c1", spec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	files, err := p.Collect()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*agentapi.ContainerFile{}
	var names []string
	for _, f := range files {
		got[f.Path] = f
		names = append(names, f.Path)
	}
	sort.Strings(names)
	want := []string{"m0", "m1", "m1/..2026_11_27_10_00_00.123456789", "m1/..2026_11_27_10_00_00.123456789/pass",
		"m1/..2026_11_27_10_00_00.123456789/user", "m1/..data", "m1/pass", "m1/user"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("collected %v, want %v", names, want)
	}
	if string(got["m0"].Data) != "10.0.0.1 pod\n" || got["m0"].Mode != 0o644 {
		t.Errorf("hosts: %q mode %o", got["m0"].Data, got["m0"].Mode)
	}
	if !got["m1"].Dir || got["m1/..data"].Symlink != "..2026_11_27_10_00_00.123456789" || got["m1/pass"].Symlink != "..data/pass" {
		t.Errorf("layout not kept: %v %v %v", got["m1"], got["m1/..data"], got["m1/pass"])
	}
	if string(got["m1/..2026_11_27_10_00_00.123456789/pass"].Data) != "s3cret" {
		t.Errorf("secret content: %q", got["m1/..2026_11_27_10_00_00.123456789/pass"].Data)
	}
}

func TestCollectRefuses(t *testing.T) {
	volume := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "volumes", "kubernetes.io~configmap", "cfg")
		kubeletVolumeDir(t, dir, map[string]string{"k": "v"})
		return dir
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string
	}{
		{"link out of the volume", func(t *testing.T, dir string) {
			if err := os.Symlink("../../../../etc", filepath.Join(dir, "escape")); err != nil {
				t.Fatal(err)
			}
		}, "leaves its directory"},
		{"absolute link", func(t *testing.T, dir string) {
			if err := os.Symlink("/etc/passwd", filepath.Join(dir, "abs")); err != nil {
				t.Fatal(err)
			}
		}, "leaves its directory"},
		{"link that climbs back in", func(t *testing.T, dir string) {
			if err := os.Symlink("..data/../k", filepath.Join(dir, "climb")); err != nil {
				t.Fatal(err)
			}
		}, "leaves its directory"},
		{"fifo", func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "only files, directories and links"},
		{"file too large", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "big"), bytes.Repeat([]byte("x"), MaxFileSize+1))
		}, "copy limit"},
		{"too much in total", func(t *testing.T, dir string) {
			for i := 0; i < 4; i++ {
				write(t, filepath.Join(dir, "f"+string(rune('a'+i))), bytes.Repeat([]byte("x"), MaxFileSize))
			}
		}, "more than 3145728 bytes"},
		{"too many files", func(t *testing.T, dir string) {
			for i := 0; i <= MaxFileCount; i++ {
				write(t, filepath.Join(dir, "many", "f"+strconv.Itoa(i)), nil)
			}
		}, "more than 1024 files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := volume(t)
			tt.setup(t, dir)
			p, err := New("c1", &specs.Spec{Mounts: []specs.Mount{bind(dir, "/cfg")}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Collect()
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "mount /cfg") {
				t.Errorf("Collect: %v, want an error naming the mount and containing %q", err, tt.want)
			}
		})
	}
}

func TestKubeletVolume(t *testing.T) {
	tests := []struct{ src, kind, name string }{
		{"/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache", "empty-dir", "cache"},
		{"/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/cfg/sub", "configmap", "cfg"},
		{"/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/", "", ""},
		{"/srv/data", "", ""},
	}
	for _, tt := range tests {
		kind, name, ok := kubeletVolume(tt.src)
		if kind != tt.kind || name != tt.name || ok != (tt.kind != "") {
			t.Errorf("kubeletVolume(%q) = %q %q %v, want %q %q", tt.src, kind, name, ok, tt.kind, tt.name)
		}
	}
}
