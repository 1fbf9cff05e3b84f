package kbuild

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckConfig(t *testing.T) {
	frag := []byte("# comment\nCONFIG_A=y\nCONFIG_N=256\n# CONFIG_MODULES is not set\n")
	tests := []struct {
		name, config string
		wantErr      []string
	}{
		{"all there", "CONFIG_A=y\nCONFIG_N=256\n# CONFIG_MODULES is not set\nCONFIG_OTHER=y\n", nil},
		{"unset option not listed", "CONFIG_A=y\nCONFIG_N=256\n", nil},
		{"dropped by Kconfig", "CONFIG_N=256\n", []string{"1 option", "CONFIG_A=y (the built .config has n)"}},
		{"other value", "CONFIG_A=m\nCONFIG_N=64\n", []string{"2 option", "CONFIG_A=y (the built .config has m)", "CONFIG_N=256 (the built .config has 64)"}},
		{"set but wanted off", "CONFIG_A=y\nCONFIG_N=256\nCONFIG_MODULES=y\n", []string{"CONFIG_MODULES=n (the built .config has y)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckConfig([]byte(tt.config), frag)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// guestNeeds is what the guest relies on (docs: guest-image/README.md):
// removing any of these from cloak.config must fail a test, not a boot.
var guestNeeds = []string{
	"CONFIG_VIRTIO_PCI=y", "CONFIG_VIRTIO_CONSOLE=y", "CONFIG_VIRTIO_NET=y", "CONFIG_VIRTIO_BLK=y",
	"CONFIG_VIRTIO_VSOCKETS=y", "CONFIG_VIRTIO_FS=y", "CONFIG_SERIAL_8250_CONSOLE=y", "CONFIG_ACPI=y",
	"CONFIG_CGROUPS=y", "CONFIG_MEMCG=y", "CONFIG_CGROUP_BPF=y", "CONFIG_PID_NS=y", "CONFIG_NET_NS=y",
	"CONFIG_IPC_NS=y", "CONFIG_UTS_NS=y", "CONFIG_POSIX_MQUEUE=y", "CONFIG_SECCOMP_FILTER=y",
	"CONFIG_OVERLAY_FS=y", "CONFIG_EROFS_FS=y", "CONFIG_DM_VERITY=y", "CONFIG_DM_INIT=y", "CONFIG_DEVTMPFS_MOUNT=y",
	"CONFIG_TCG_CRB=y", "CONFIG_TCG_TIS=y", "CONFIG_AMD_MEM_ENCRYPT=y", "CONFIG_SEV_GUEST=y",
	"CONFIG_INTEL_TDX_GUEST=y", "CONFIG_TDX_GUEST_DRIVER=y", "CONFIG_TSM_REPORTS=y", "CONFIG_EFI_STUB=y",
	"CONFIG_HW_RANDOM=y", "CONFIG_BLK_DEV_INITRD=y", "CONFIG_UNIX98_PTYS=y", "CONFIG_IPV6=y",
	"CONFIG_CRYPTO_SHA256_SSSE3=y", "CONFIG_BPF_JIT=y",
}

func TestFragmentHasWhatTheGuestNeeds(t *testing.T) {
	have := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(Fragment))
	for sc.Scan() {
		have[strings.TrimSpace(sc.Text())] = true
	}
	for _, n := range guestNeeds {
		if !have[n] {
			t.Errorf("cloak.config lacks %s, which the guest relies on", n)
		}
	}
	if bytes.Contains(Fragment, []byte("CONFIG_MODULES=y")) {
		t.Error("cloak.config enables modules: the guest loads none")
	}
}

// TestBuiltKernel checks the kernel `make image` compiled (from the cache;
// it compiles it when absent, about 6 min on 2 cores): its .config sets
// everything cloak.config asks for, builds no modules, and its bzImage is
// the one recorded in known-builds.txt for this source, fragment and
// compiler — that is, a build on another machine (the one that recorded it)
// gave the same bytes.
func TestBuiltKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips compiling the kernel")
	}
	cache := cacheDir(t)
	k, err := Build(context.Background(), Options{CacheDir: cache, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	config, err := os.ReadFile(k.Config())
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckConfig(config, Fragment); err != nil {
		t.Error(err)
	}
	if !bytes.Contains(config, []byte("# CONFIG_MODULES is not set")) {
		t.Error("the built kernel supports modules")
	}
	want, ok := Recorded(k)
	if !ok {
		t.Fatalf("no recorded bzImage sha256 for %s %s, fragment %s, %s: after changing cloak.config, build twice (make kernel-repro) and add the line it prints to known-builds.txt",
			k.SourcePackage, k.SourceVersion, k.FragmentSHA256, k.Compiler)
	}
	if k.SHA256 != want {
		t.Errorf("bzImage sha256 %s, known-builds.txt records %s for the same inputs: the build is not reproducible", k.SHA256, want)
	}
}

// TestBuildReproducible compiles the kernel a second time, in another
// directory, and compares it with the cached build. It takes the length of
// a kernel build, so it runs when asked: CLOAK_KERNEL_REPRO=1 (make
// kernel-repro).
func TestBuildReproducible(t *testing.T) {
	if os.Getenv("CLOAK_KERNEL_REPRO") != "1" {
		t.Skip("compiles the kernel twice: set CLOAK_KERNEL_REPRO=1 (make kernel-repro)")
	}
	cache := cacheDir(t)
	a, err := Build(context.Background(), Options{CacheDir: cache, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildInto(context.Background(), Options{CacheDir: cache, Progress: testWriter{t}}, filepath.Join(t.TempDir(), "again"))
	if err != nil {
		t.Fatal(err)
	}
	if a.SHA256 != b.SHA256 {
		t.Fatalf("two builds of the same inputs differ: %s (cached) and %s", a.SHA256, b.SHA256)
	}
	t.Logf("reproducible; known-builds.txt line:\n%s", KnownLine(b))
}

func cacheDir(t *testing.T) string {
	if d := os.Getenv("CLOAK_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(d, "cloak")
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
