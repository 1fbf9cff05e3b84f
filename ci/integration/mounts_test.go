package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestContainerdMounts: bind mounts of a cloak task reach the guest through
// a real containerd and `ctr run --mount`: a small host file and a
// directory laid out like a kubelet configMap volume are copied, an
// emptyDir is a fresh writable guest directory, and a plain host directory
// is refused (with the reason, through ctr) unless the handler shares it
// over virtio-fs.
func TestContainerdMounts(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e, imageDir, registryHost, ref := containerdWithBusybox(t)
	vms := newCloakVMs(t, imageDir, registryHost)
	runDir, consoleDir := vms.runDir, vms.consoleDir
	config := func(_, extra string) string { return vms.config(t, extra) }

	// Host paths as kubelet lays them out for a pod.
	host := t.TempDir()
	file := filepath.Join(host, "hosts")
	mustWrite(t, file, "10.1.2.3 cloak-mounts-test\n")
	volumes := filepath.Join(host, "pods", "uid-1", "volumes")
	cm := filepath.Join(volumes, "kubernetes.io~configmap", "cfg")
	ts := "..2026_11_27_10_00_00.000000001"
	mustWrite(t, filepath.Join(cm, ts, "app.conf"), "mode=guest\n")
	mustSymlink(t, ts, filepath.Join(cm, "..data"))
	mustSymlink(t, "..data/app.conf", filepath.Join(cm, "app.conf"))
	empty := filepath.Join(volumes, "kubernetes.io~empty-dir", "cache")
	if err := os.MkdirAll(empty, 0o777); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(host, "data")
	mustWrite(t, filepath.Join(data, "from-host"), "shared\n")

	mount := func(src, dst, opts string) []string {
		return []string{"--mount", "type=bind,src=" + src + ",dst=" + dst + ",options=" + opts}
	}
	run := func(t *testing.T, cfg, id string, mounts []string, args ...string) ctrResult {
		t.Helper()
		full := append([]string{"run", "--rm", "--runtime", cloakRuntime, "--runtime-config-path", cfg}, mounts...)
		full = append(append(full, ref, id), args...)
		start := time.Now()
		r, err := e.ctr(t, nil, full...)
		if err != nil && r.code == 0 {
			t.Fatal(err)
		}
		t.Logf("ctr run %s: exit %d in %.1fs", id, r.code, time.Since(start).Seconds())
		return r
	}

	t.Run("copied files and emptyDir", func(t *testing.T) {
		mounts := append(append(mount(file, "/etc/hosts", "rbind:ro"), mount(cm, "/etc/app", "rbind:ro")...), mount(empty, "/cache", "rbind:rw")...)
		r := run(t, config("none", ""), "copied", mounts, "sh", "-c",
			`cat /etc/hosts /etc/app/app.conf; ls -A /etc/app | tr '\n' ' '; echo; `+
				`[ -z "$(ls -A /cache)" ] && echo cache-empty; echo x > /cache/new && echo cache-writable; `+
				`echo x > /etc/app/new 2>/dev/null || echo app-read-only`)
		want := "10.1.2.3 cloak-mounts-test\nmode=guest\n" + ts + " ..data app.conf \ncache-empty\ncache-writable\napp-read-only\n"
		if r.code != 0 || r.stdout != want {
			t.Errorf("exit %d, stdout %q, stderr %q; want stdout %q", r.code, r.stdout, r.stderr, want)
		}
		if left, _ := os.ReadDir(empty); len(left) > 0 {
			t.Errorf("the guest wrote into the host's emptyDir source: %v", left)
		}
	})

	// A plain host directory is refused, with a reason that says what to do.
	// The confidential handler's pods carry a policy (else that refusal
	// would come first).
	initdataFile := filepath.Join(host, "initdata.toml")
	mustWrite(t, initdataFile, string(emulatedInitdata("mounts")))
	refusals := []struct {
		name, cfg string
		want      []string
	}{
		{"confidential handler", config("emulated", fmt.Sprintf("tee = \"emulated\"\n[kbs]\ninitdata_file = %q", initdataFile)), []string{`tee = "emulated" is a confidential handler`, "emptyDir"}},
		{"no virtiofsd", config("nofsd", `shared_fs = "virtio-fs"`+"\n"+`virtiofsd = "/nonexistent/virtiofsd"`), []string{"install virtiofsd"}},
	}
	for i, tt := range refusals {
		t.Run("host directory refused: "+tt.name, func(t *testing.T) {
			r := run(t, tt.cfg, fmt.Sprintf("refused-%d", i), mount(data, "/data", "rbind:ro"), "true")
			if r.code == 0 {
				t.Fatalf("a host directory was accepted: stdout %q", r.stdout)
			}
			t.Logf("ctr: %s", strings.TrimSpace(r.stderr))
			// Refused before a VM boots for it: no guest console exists.
			if logs, _ := filepath.Glob(filepath.Join(consoleDir, fmt.Sprintf("*-refused-%d.log", i))); len(logs) > 0 {
				t.Errorf("a VM was booted for a container whose mount is refused: %v", logs)
			}
			for _, want := range append(tt.want, "mount /data", data) {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("ctr stderr lacks %q:\n%s", want, r.stderr)
				}
			}
		})
	}

	t.Run("host directory shared over virtio-fs", func(t *testing.T) {
		virtiofsd, err := exec.LookPath("/usr/libexec/virtiofsd")
		if err != nil {
			if virtiofsd, err = exec.LookPath("virtiofsd"); err != nil {
				t.Skip("virtiofsd is not installed (Debian 12 does not package it); the shared-directory path needs it")
			}
		}
		cfg := config("virtiofs", fmt.Sprintf("shared_fs = \"virtio-fs\"\nvirtiofsd = %q", virtiofsd))
		r := run(t, cfg, "shared", mount(data, "/data", "rbind:rw"), "sh", "-c", "cat /data/from-host; echo guest > /data/from-guest")
		if r.code != 0 || r.stdout != "shared\n" {
			t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if b, err := os.ReadFile(filepath.Join(data, "from-guest")); err != nil || string(b) != "guest\n" {
			t.Errorf("the guest's write on the host: %q, %v", b, err)
		}
	})

	waitNoPids(t, runDir, 15*time.Second)
	if left, _ := os.ReadDir(runDir); len(left) > 0 {
		t.Errorf("VM run or shared dirs left in %s: %v", runDir, left)
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
