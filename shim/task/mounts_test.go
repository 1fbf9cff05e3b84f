package task

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/shim/config"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

func TestContainerRequest(t *testing.T) {
	tmp := t.TempDir()
	hosts := filepath.Join(tmp, "hosts")
	if err := os.WriteFile(hosts, []byte("10.0.0.1 web\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(tmp, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	specWith := func(ms ...specs.Mount) []byte {
		raw, _ := json.Marshal(&specs.Spec{Process: &specs.Process{Args: []string{"sh"}}, Mounts: ms})
		return raw
	}
	hostsMount := specs.Mount{Type: "bind", Source: hosts, Destination: "/etc/hosts", Options: []string{"rbind"}}
	dataMount := specs.Mount{Type: "bind", Source: data, Destination: "/data", Options: []string{"rbind", "ro"}}

	t.Run("no binds: spec as is", func(t *testing.T) {
		raw := specWith(specs.Mount{Type: "proc", Source: "proc", Destination: "/proc"})
		req, err := containerRequest(config.Config{}.WithDefaults(), &sandbox{}, "c1", "img", raw)
		if err != nil || string(req.OciSpec) != string(raw) || len(req.Files)+len(req.MountSources) > 0 {
			t.Fatalf("got %v, %v", req, err)
		}
	})
	t.Run("copied file", func(t *testing.T) {
		req, err := containerRequest(config.Config{}.WithDefaults(), &sandbox{}, "c1", "img", specWith(hostsMount))
		if err != nil {
			t.Fatal(err)
		}
		if len(req.Files) != 1 || string(req.Files[0].Data) != "10.0.0.1 web\n" || req.MountSources[0].GetFiles() != "m0" {
			t.Errorf("files %v, sources %v", req.Files, req.MountSources)
		}
		if strings.Contains(string(req.OciSpec), hosts) {
			t.Errorf("guest spec still names the host path: %s", req.OciSpec)
		}
	})
	refusals := []struct {
		name string
		cfg  config.Config
		want string
	}{
		{"confidential", config.Config{TEE: config.TEEEmulated}, `tee = "emulated" is a confidential handler`},
		{"shared_fs none", config.Config{}, `shared_fs = "none"`},
		{"virtiofsd missing", config.Config{SharedFS: config.SharedFSVirtioFS, Virtiofsd: "/nonexistent/virtiofsd"}, "install virtiofsd"},
	}
	for _, tt := range refusals {
		t.Run("host directory refused: "+tt.name, func(t *testing.T) {
			_, err := containerRequest(tt.cfg.WithDefaults(), &sandbox{}, "c1", "img", specWith(hostsMount, dataMount))
			if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want an invalid-argument error", err)
			}
			for _, want := range []string{tt.want, "/data", data} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounts need root")
	}
}

// TestHostShare binds host paths into a VM's shared directory and removes
// it again, leaving the host's files alone.
func TestHostShare(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	virtiofsd := filepath.Join(tmp, "virtiofsd")
	if err := os.WriteFile(virtiofsd, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{SharedFS: config.SharedFSVirtioFS, Virtiofsd: virtiofsd}.WithDefaults()
	qcfg := qemu.Config{RunDir: filepath.Join(tmp, "run")}
	req := &agentapi.CreateSandboxRequest{}
	h, err := startShare(cfg, &qcfg, req)
	if err != nil || h == nil {
		t.Fatalf("startShare: %v, %v", h, err)
	}
	t.Cleanup(func() { _ = h.close() })
	if qcfg.SharedFS.Dir != shareDir(qcfg.RunDir) || req.SharedFsTag != qemu.DefaultSharedFSTag {
		t.Errorf("VM config %+v, tag %q", qcfg.SharedFS, req.SharedFsTag)
	}
	data := filepath.Join(tmp, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "keep"), []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.bind(data, "c1/m3", true); err != nil {
		t.Fatal(err)
	}
	if err := h.bind(filepath.Join(data, "keep"), "c1/m4", false); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(h.dir, "c1", "m3", "keep")); err != nil || string(b) != "host" {
		t.Errorf("shared content: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(h.dir, "c1", "m3", "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write into a read-only share: %v, want EROFS", err)
	}
	// A deleted container's binds go; another container's stay.
	if err := h.bind(data, "c2/m0", true); err != nil {
		t.Fatal(err)
	}
	if err := h.unbindContainer("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(h.dir, "c1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("c1's binds left after unbindContainer: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(h.dir, "c2", "m0", "keep")); err != nil || string(b) != "host" {
		t.Errorf("c2's share after c1 was unbound: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(data, "keep")); err != nil || string(b) != "host" {
		t.Errorf("host file after unbindContainer: %q, %v", b, err)
	}
	if err := h.close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(h.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("shared dir left: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(data, "keep")); err != nil || string(b) != "host" {
		t.Errorf("host file after cleanup: %q, %v", b, err)
	}

	// Without virtio-fs there is no shared directory.
	none := qemu.Config{RunDir: filepath.Join(tmp, "run2")}
	if h, err := startShare(config.Config{}.WithDefaults(), &none, req); h != nil || err != nil || none.SharedFS.Dir != "" {
		t.Errorf("shared_fs none: %v, %v, %+v", h, err, none.SharedFS)
	}
}
