package config

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// handlerTEE is each default configuration in handlers/ and its handler's TEE.
var handlerTEE = map[string]string{
	"cloak":    TEENone,
	"emulated": TEEEmulated,
	"snp":      TEESNP,
	"tdx":      TEETDX,
}

func TestHandlerConfigs(t *testing.T) {
	tests := []struct {
		handler     string
		accel       string
		firmware    string
		annotations []string
	}{
		{handler: "cloak", accel: "auto", annotations: []string{}},
		{handler: "emulated", accel: "auto", annotations: []string{AnnotationInitdata}},
		{handler: "snp", accel: "kvm", firmware: "/usr/share/ovmf/OVMF.amdsev.fd", annotations: []string{AnnotationInitdata}},
		{handler: "tdx", accel: "kvm", firmware: "/usr/share/ovmf/OVMF.fd", annotations: []string{AnnotationInitdata}},
	}
	if len(tests) != len(handlerTEE) {
		t.Fatalf("%d handlers tested, %d known", len(tests), len(handlerTEE))
	}
	for _, tt := range tests {
		t.Run(tt.handler, func(t *testing.T) {
			c, err := Load(filepath.Join("handlers", "configuration-"+tt.handler+".toml"))
			if err != nil {
				t.Fatal(err)
			}
			if c.TEE != handlerTEE[tt.handler] {
				t.Errorf("tee %q, want %q", c.TEE, handlerTEE[tt.handler])
			}
			// make install puts the image where the defaults look for it.
			if c.ImageDir != DefaultImageDir || c.GuestKernel != GuestKernelCloak || c.Kernel != DefaultImageDir+"/vmlinuz" ||
				c.Initrd != "" || c.RootDisk != DefaultImageDir+"/root.img" {
				t.Errorf("image_dir %q, guest_kernel %q, kernel %q, initrd %q, root_disk %q: want Cloak's kernel and the root disk of the installed image in %s",
					c.ImageDir, c.GuestKernel, c.Kernel, c.Initrd, c.RootDisk, DefaultImageDir)
			}
			if c.Accel != tt.accel {
				t.Errorf("accel %q, want %q", c.Accel, tt.accel)
			}
			if c.Firmware != tt.firmware {
				t.Errorf("firmware %q, want %q", c.Firmware, tt.firmware)
			}
			if c.SharedFS != SharedFSNone {
				t.Errorf("shared_fs %q: no handler shares host directories by default", c.SharedFS)
			}
			if len(c.AllowedAnnotations) != len(tt.annotations) || strings.Join(c.AllowedAnnotations, ",") != strings.Join(tt.annotations, ",") {
				t.Errorf("allowed_annotations %q, want %q", c.AllowedAnnotations, tt.annotations)
			}
			if c.VCPUs != 1 || c.MemoryMiB != 512 || c.RunDir != DefaultRunDir || c.ConsoleLogDir != "/var/log/cloak" {
				t.Errorf("vcpus %d, memory_mib %d, run_dir %q, console_log_dir %q: want 1, 512 (docs/kubernetes.md's pod overhead), %s, /var/log/cloak",
					c.VCPUs, c.MemoryMiB, c.RunDir, c.ConsoleLogDir, DefaultRunDir)
			}
			if c.KBS != (KBS{}) {
				t.Errorf("[kbs] %+v: the defaults name no KBS (it is the site's)", c.KBS)
			}
		})
	}
}

// installEnv runs ci/install.sh into a temporary DESTDIR with stand-in
// binaries and image files.
type installEnv struct {
	destdir, bin, image string
}

func newInstallEnv(t *testing.T) installEnv {
	t.Helper()
	e := installEnv{destdir: t.TempDir(), bin: t.TempDir(), image: t.TempDir()}
	for _, b := range []string{"containerd-shim-cloak-v2", "kbs", "kbsctl", "cloak-image"} {
		if err := os.WriteFile(filepath.Join(e.bin, b), []byte("#!/bin/sh\necho "+b+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range imageFiles {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(e.image, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(e.image, f), []byte("image "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// imageFiles are what make image writes and make install copies.
var imageFiles = []string{"vmlinuz", "root.img", "manifest.json", "debian/vmlinuz", "debian/initrd.img"}

// run runs the install script with PREFIX; err is set on a non-zero exit.
func (e installEnv) run(t *testing.T, prefix string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command("./ci/install.sh")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "DESTDIR="+e.destdir, "PREFIX="+prefix, "BIN="+e.bin, "IMAGE_DIR="+e.image)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

func TestInstall(t *testing.T) {
	e := newInstallEnv(t)
	stdout, stderr, err := e.run(t, "/opt/cloak")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, stderr)
	}

	for _, b := range []string{"containerd-shim-cloak-v2", "kbs", "kbsctl", "cloak-image"} {
		fi, err := os.Stat(filepath.Join(e.destdir, "opt/cloak/bin", b))
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("binary %s: %v, mode %v; want installed 0755 under PREFIX/bin", b, err, fi)
		}
	}
	if _, err := os.Stat(filepath.Join(e.destdir, "opt/cloak/bin/cloak-snapshotter")); err == nil {
		t.Error("cloak-snapshotter installed though it was not built")
	}
	if !strings.Contains(stderr, "skipping cloak-snapshotter") {
		t.Errorf("no progress line says the snapshotter was skipped:\n%s", stderr)
	}
	for _, f := range imageFiles {
		got, err := os.ReadFile(filepath.Join(e.destdir, DefaultImageDir, f))
		if err != nil || string(got) != "image "+f {
			t.Errorf("image file %s: %q, %v", f, got, err)
		}
	}
	for h := range handlerTEE {
		want, err := os.ReadFile(filepath.Join("handlers", "configuration-"+h+".toml"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(e.destdir, "etc/cloak", "configuration-"+h+".toml"))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("configuration-%s.toml installed: %v; want a copy of handlers/configuration-%s.toml", h, err, h)
		}
	}

	// The snippet is valid TOML, registers every handler with its installed
	// configuration, and is also saved beside the image.
	checkSnippet(t, e.destdir, stdout)
	saved, err := os.ReadFile(filepath.Join(e.destdir, "usr/share/cloak/containerd-config.toml"))
	if err != nil || string(saved) != stdout {
		t.Errorf("saved snippet differs from the printed one (%v)", err)
	}

	// A changed configuration is kept; the new default goes beside it.
	mine := filepath.Join(e.destdir, "etc/cloak/configuration-snp.toml")
	if err := os.WriteFile(mine, []byte("tee = \"snp\"\nvcpus = 4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, err = e.run(t, "/opt/cloak")
	if err != nil {
		t.Fatalf("second install: %v\n%s", err, stderr)
	}
	if got, _ := os.ReadFile(mine); string(got) != "tee = \"snp\"\nvcpus = 4\n" {
		t.Errorf("install overwrote the edited configuration: %q", got)
	}
	if c, err := Load(mine + ".new"); err != nil || c.TEE != TEESNP {
		t.Errorf("new default beside the edited configuration: %+v, %v", c, err)
	}
	if !strings.Contains(stderr, mine+".new") || !strings.Contains(stderr, "is up to date") {
		t.Errorf("progress lines do not say what happened to the configurations:\n%s", stderr)
	}
	if _, err := os.Stat(filepath.Join(e.destdir, "etc/cloak/configuration-tdx.toml.new")); err == nil {
		t.Error("an unchanged configuration got a .new copy")
	}
}

// checkSnippet parses the containerd configuration install printed.
func checkSnippet(t *testing.T, destdir, snippet string) {
	t.Helper()
	type snapshotter struct {
		Snapshotter string `toml:"snapshotter"`
	}
	var doc struct {
		Plugins struct {
			Transfer struct {
				UnpackConfig []struct {
					Platform    string `toml:"platform"`
					Snapshotter string `toml:"snapshotter"`
				} `toml:"unpack_config"`
			} `toml:"io.containerd.transfer.v1.local"`
			Images struct {
				RuntimePlatforms map[string]snapshotter `toml:"runtime_platforms"`
			} `toml:"io.containerd.cri.v1.images"`
			CRI struct {
				Containerd struct {
					Runtimes map[string]struct {
						RuntimeType    string            `toml:"runtime_type"`
						Snapshotter    string            `toml:"snapshotter"`
						PodAnnotations []string          `toml:"pod_annotations"`
						Options        map[string]string `toml:"options"`
					} `toml:"runtimes"`
				} `toml:"containerd"`
			} `toml:"io.containerd.cri.v1.runtime"`
		} `toml:"plugins"`
		ProxyPlugins map[string]struct {
			Type    string `toml:"type"`
			Address string `toml:"address"`
		} `toml:"proxy_plugins"`
	}
	if err := toml.Unmarshal([]byte(snippet), &doc); err != nil {
		t.Fatalf("containerd snippet is not TOML: %v\n%s", err, snippet)
	}
	runtimes := doc.Plugins.CRI.Containerd.Runtimes
	if len(runtimes) != len(handlerTEE) {
		t.Errorf("snippet has runtimes %v, want one per handler", runtimes)
	}
	for h, tee := range handlerTEE {
		name := "cloak-" + h
		if h == "cloak" {
			name = "cloak"
		}
		r, ok := runtimes[name]
		if !ok {
			t.Errorf("snippet has no runtime %s", name)
			continue
		}
		if r.RuntimeType != "io.containerd.cloak.v2" || r.Snapshotter != "cloak" || len(r.PodAnnotations) != 1 || r.PodAnnotations[0] != "io.cloak.*" {
			t.Errorf("runtime %s: %+v", name, r)
		}
		// CRI picks a pull's snapshotter by handler: without this the
		// host downloads and unpacks every layer.
		if p := doc.Plugins.Images.RuntimePlatforms[name]; p.Snapshotter != "cloak" {
			t.Errorf("runtime_platforms.%s = %+v, want the cloak snapshotter for pulls", name, p)
		}
		path := r.Options["ConfigPath"]
		c, err := Load(filepath.Join(destdir, path))
		if err != nil || c.TEE != tee || !filepath.IsAbs(path) {
			t.Errorf("runtime %s: ConfigPath %q: %+v, %v; want the installed configuration with tee %q", name, path, c, err, tee)
		}
	}
	var unpack []string
	for _, u := range doc.Plugins.Transfer.UnpackConfig {
		unpack = append(unpack, u.Platform+" "+u.Snapshotter)
	}
	if strings.Join(unpack, ",") != "linux/amd64 overlayfs,linux/amd64 cloak" {
		t.Errorf("transfer unpack_config %q: want overlayfs kept and cloak added", unpack)
	}
	if p := doc.ProxyPlugins["cloak"]; p.Type != "snapshot" || p.Address != "/run/cloak/snapshotter.sock" {
		t.Errorf("proxy_plugins.cloak = %+v, want the cloak snapshotter", p)
	}
}

func TestInstallRefuses(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(e installEnv) error
		prefix  string
		wantErr string
	}{
		{name: "shim not built", prepare: func(e installEnv) error {
			return os.Remove(filepath.Join(e.bin, "containerd-shim-cloak-v2"))
		}, prefix: "/usr/local", wantErr: "make build"},
		{name: "image not built", prepare: func(e installEnv) error {
			return os.Remove(filepath.Join(e.image, "root.img"))
		}, prefix: "/usr/local", wantErr: "make image"},
		{name: "relative prefix", prepare: func(installEnv) error { return nil }, prefix: "usr", wantErr: "absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newInstallEnv(t)
			if err := tt.prepare(e); err != nil {
				t.Fatal(err)
			}
			_, stderr, err := e.run(t, tt.prefix)
			if err == nil || !strings.Contains(stderr, tt.wantErr) {
				t.Fatalf("install: %v, stderr %q; want a failure saying %q", err, stderr, tt.wantErr)
			}
			if entries, _ := os.ReadDir(e.destdir); len(entries) != 0 {
				t.Errorf("a refused install wrote into DESTDIR: %v", entries)
			}
		})
	}
}
