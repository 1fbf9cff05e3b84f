package build

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/measurements/bundle"
	"github.com/cloak-containers/cloak/measurements/snp"
)

var fakeBin string // static binary that prints "runc version 1.4.3-fake"

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "cloak-build-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fakeBin = filepath.Join(dir, "fakebin")
	cmd := exec.Command("go", "build", "-o", fakeBin, "./testdata/fakebin")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build fake binary: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	fakeVersion = "6.12.1-1~bpo12+1"
	fakeRelease = "6.12.1+deb12-cloud-amd64"
)

// fakeKernelCache lays out a cache entry as kernel.Fetch leaves it, with the
// guest modules (fake ELF objects, xz compressed) and their modules.dep.
func fakeKernelCache(t *testing.T) string {
	t.Helper()
	cache := t.TempDir()
	root := filepath.Join(cache, "kernel", fakeVersion, "root")
	mods := filepath.Join(root, "lib", "modules", fakeRelease)
	write := func(name string, b []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "boot", "vmlinuz-"+fakeRelease), bytes.Repeat([]byte("bzImage "), 1000))
	write(filepath.Join(root, "boot", "config-"+fakeRelease), []byte(strings.Join(requiredConfig, "\n")+"\nCONFIG_VIRTIO_NET=m\n"))
	dep, err := os.ReadFile("kmod/testdata/modules.dep")
	if err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(mods, "modules.dep"), dep)
	for _, line := range strings.Split(string(dep), "\n") {
		file, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var buf bytes.Buffer
		w, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(w, "\x7fELF module %s", file)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		write(filepath.Join(mods, file), buf.Bytes())
	}
	meta := fmt.Sprintf(`{"package":"linux-image-%s","version":"%s","release":"%s","deb_sha256":"%064d"}`,
		fakeRelease, fakeVersion, fakeRelease, 0)
	write(filepath.Join(cache, "kernel", fakeVersion, "kernel.json"), []byte(meta))
	return cache
}

func fakeOptions(t *testing.T, cache, out string) Options {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(cache, "cloak-bzImage")
	if err := os.WriteFile(kernel, bytes.Repeat([]byte("cloak bzImage "), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	return Options{OutDir: out, CacheDir: cache, KernelVersion: fakeVersion, Kernel: kernel,
		Agent: fakeBin, AA: fakeBin, Runc: fakeBin, CABundle: ca}
}

// imageFiles lists every file of an image directory.
var imageFiles = []string{KernelFile, RootFile, ManifestFile, DebianDir + "/" + KernelFile, DebianDir + "/" + InitrdFile}

// readRoot extracts a root disk's EROFS part with fsck.erofs and returns
// path -> "mode content" (symlinks: "link target").
func readRoot(t *testing.T, img string, dataSize int64) map[string]string {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	fs := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(fs, b[:dataSize], 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "x")
	if out, err := exec.Command("fsck.erofs", "--extract="+dir, "--preserve-perms", fs).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v\n%s", err, out)
	}
	got := map[string]string{}
	err = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			got[rel] = "link " + target
		case info.IsDir():
			perm := uint32(info.Mode().Perm())
			if info.Mode()&os.ModeSticky != 0 {
				perm |= 0o1000
			}
			got[rel] = fmt.Sprintf("%o", perm)
		default:
			c, _ := os.ReadFile(p)
			got[rel] = fmt.Sprintf("%o %s", info.Mode().Perm(), c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// readInitrd decompresses an initrd and returns path -> (mode, content).
func readInitrd(t *testing.T, img []byte) map[string]string {
	t.Helper()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	raw, err := dec.DecodeAll(img, nil)
	if err != nil {
		t.Fatalf("initrd is not zstd: %v", err)
	}
	r := cpio.NewReader(bytes.NewReader(raw))
	got := map[string]string{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = fmt.Sprintf("%o %s", h.Mode, b)
	}
}

func TestBuildReproducibleAndComplete(t *testing.T) {
	cache := fakeKernelCache(t)
	out1, out2 := t.TempDir(), t.TempDir()
	m1, err := Build(context.Background(), fakeOptions(t, cache, out1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), fakeOptions(t, cache, out2)); err != nil {
		t.Fatal(err)
	}
	for _, f := range imageFiles {
		a, _ := os.ReadFile(filepath.Join(out1, f))
		b, _ := os.ReadFile(filepath.Join(out2, f))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds of the same inputs (or is empty)", f)
		}
	}

	// The default boot: Cloak's kernel, no initrd, the root disk mounted
	// by the kernel from the command line's verity table.
	if _, err := os.Stat(filepath.Join(out1, InitrdFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an initrd.img beside Cloak's kernel: %v", err)
	}
	for _, w := range []string{Cmdline + " ", "root=/dev/dm-0", "init=/usr/bin/cloak-agent", m1.Root.RootHash, "panic_on_corruption"} {
		if !strings.Contains(m1.Cmdline, w) {
			t.Errorf("cmdline %q lacks %q", m1.Cmdline, w)
		}
	}
	if m1.KernelBuild.SourcePackage != "prebuilt" || m1.RuncVersion != "1.4.3-fake" {
		t.Errorf("manifest = %+v", m1)
	}
	files := readRoot(t, filepath.Join(out1, RootFile), m1.Root.DataSize)
	want := map[string]string{
		"dev": "755", "etc": "755", "etc/ssl": "755", "etc/ssl/certs": "755", "mnt": "755", "proc": "555",
		"run": "755", "sys": "555", "tmp": "1777", "usr": "755", "usr/bin": "755", "var": "755",
		"etc/hostname": "link /run/etc/hostname", "etc/hosts": "link /run/etc/hosts", "etc/resolv.conf": "link /run/etc/resolv.conf",
	}
	for n, w := range want {
		if files[n] != w {
			t.Errorf("root %s = %q, want %q", n, files[n], w)
		}
	}
	for _, n := range []string{"usr/bin/cloak-agent", "usr/bin/cloak-aa", "usr/bin/runc"} {
		if !strings.HasPrefix(files[n], "755 \x7fELF") {
			t.Errorf("root %s = %.12q, want a 0755 ELF", n, files[n])
		}
	}
	if !strings.HasPrefix(files["etc/ssl/certs/ca-certificates.crt"], "644 -----BEGIN CERTIFICATE") {
		t.Errorf("root CA bundle = %.20q", files["etc/ssl/certs/ca-certificates.crt"])
	}
	if len(files) != len(want)+4 {
		t.Errorf("root holds %d entries, want %d: %v", len(files), len(want)+4, files)
	}

	// The Debian flavour: the same binaries in an initrd, with modules.
	d := m1.Debian
	wantModules := []string{"failover.ko", "net_failover.ko", "virtio_net.ko", "overlay.ko",
		"vsock.ko", "vmw_vsock_virtio_transport_common.ko", "vmw_vsock_virtio_transport.ko"}
	if !reflect.DeepEqual(d.Modules, wantModules) {
		t.Errorf("modules = %v, want %v", d.Modules, wantModules)
	}
	if d.Cmdline != Cmdline || d.KernelPackage.Version != fakeVersion {
		t.Errorf("debian flavour = %+v", d)
	}
	img, err := os.ReadFile(filepath.Join(out1, DebianDir, InitrdFile))
	if err != nil {
		t.Fatal(err)
	}
	ifiles := readInitrd(t, img)
	var names []string
	for n := range ifiles {
		names = append(names, n)
	}
	iwant := []string{"dev", "etc", "etc/ssl", "etc/ssl/certs", "etc/ssl/certs/ca-certificates.crt", "init",
		"lib", "lib/modules", "lib/modules/load.list", "mnt", "proc", "run", "sys", "tmp", "usr", "usr/bin",
		"usr/bin/cloak-aa", "usr/bin/runc", "var"}
	for _, m := range wantModules {
		iwant = append(iwant, "lib/modules/"+m)
	}
	if len(names) != len(iwant) {
		t.Errorf("initrd holds %d entries, want %d: %v", len(names), len(iwant), names)
	}
	for _, n := range iwant {
		if _, ok := ifiles[n]; !ok {
			t.Errorf("initrd lacks %s", n)
		}
	}
	if got, want := ifiles["lib/modules/load.list"], "100644 "+strings.Join(wantModules, "\n")+"\n"; got != want {
		t.Errorf("load.list = %q, want %q", got, want)
	}
	if got := ifiles["lib/modules/virtio_net.ko"]; got != "100644 \x7fELF module kernel/drivers/net/virtio_net.ko.xz" {
		t.Errorf("virtio_net.ko = %q, want the decompressed module", got)
	}
	if !strings.HasPrefix(ifiles["init"], "100755 \x7fELF") || !strings.HasPrefix(ifiles["tmp"], "41777") {
		t.Errorf("init or tmp has the wrong mode: %.10q %.10q", ifiles["init"], ifiles["tmp"])
	}

	v, err := VerifyDir(context.Background(), out1)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Mismatches) != 0 || v.Emulated != m1.Measurements.Emulated || v.DebianEmulated != d.Measurements.Emulated {
		t.Fatalf("fresh image does not verify: %+v", v)
	}
	if v.Emulated == v.DebianEmulated {
		t.Error("both flavours have the same emulated measurement")
	}
}

func TestVerifyDirDetectsTampering(t *testing.T) {
	cache := fakeKernelCache(t)
	src := t.TempDir()
	m, err := Build(context.Background(), fakeOptions(t, cache, src))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		tamper func(dir string) error
		want   []string // substrings, one per expected mismatch
	}{
		{"untouched", func(string) error { return nil }, nil},
		{"root byte flipped", func(dir string) error { return flipByteAt(filepath.Join(dir, RootFile), m.Root.DataSize/2) },
			[]string{"root.img: size", "does not match its root hash"}},
		{"root hash tree byte flipped", func(dir string) error {
			return flipByteAt(filepath.Join(dir, RootFile), m.Root.DataSize+1)
		}, []string{"root.img: size", "does not match its root hash"}},
		{"debian initrd byte flipped", func(dir string) error { return flipByte(filepath.Join(dir, DebianDir, InitrdFile)) },
			[]string{"debian/initrd.img", "debian emulated measurement"}},
		{"kernel byte flipped", func(dir string) error { return flipByte(filepath.Join(dir, KernelFile)) },
			[]string{"vmlinuz", "emulated measurement"}},
		{"cmdline edited in manifest", func(dir string) error {
			return editManifest(dir, func(m *Manifest) { m.Cmdline += " init=/bin/sh" })
		}, []string{"emulated measurement"}},
		{"root hash edited in manifest and cmdline", func(dir string) error {
			return editManifest(dir, func(m *Manifest) {
				old := m.Root.RootHash
				m.Root.RootHash = strings.Repeat("00", 32)
				m.Cmdline = strings.ReplaceAll(m.Cmdline, old, m.Root.RootHash)
			})
		}, []string{"does not match its root hash", "emulated measurement"}},
		{"cmdline mounts another root", func(dir string) error {
			return editManifest(dir, func(m *Manifest) {
				m.Cmdline = strings.ReplaceAll(m.Cmdline, m.Root.RootHash, strings.Repeat("11", 32))
			})
		}, []string{"cmdline does not mount", "emulated measurement"}},
		{"debian initrd digest edited in manifest", func(dir string) error {
			return editManifest(dir, func(m *Manifest) { m.Debian.Initrd.SHA384 = strings.Repeat("00", 48) })
		}, []string{"debian/initrd.img"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, DebianDir), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, f := range imageFiles {
				b, err := os.ReadFile(filepath.Join(src, f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := tt.tamper(dir); err != nil {
				t.Fatal(err)
			}
			v, err := VerifyDir(context.Background(), dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(v.Mismatches) != len(tt.want) {
				t.Fatalf("mismatches = %q, want %d", v.Mismatches, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(v.Mismatches[i], w) {
					t.Errorf("mismatch %d = %q, want it to name %q", i, v.Mismatches[i], w)
				}
			}
		})
	}
}

func flipByteAt(name string, off int64) error {
	b, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	b[off] ^= 1
	return os.WriteFile(name, b, 0o644)
}

func flipByte(name string) error {
	b, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	b[len(b)/2] ^= 1
	return os.WriteFile(name, b, 0o644)
}

func editManifest(dir string, edit func(*Manifest)) error {
	m, err := ReadManifest(dir)
	if err != nil {
		return err
	}
	edit(m)
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, ManifestFile), b, 0o644)
}

func TestBuildRefusesDynamicBinary(t *testing.T) {
	dynamic, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no `true` binary on this machine")
	}
	if b, _ := os.ReadFile(dynamic); checkStatic(b) == nil {
		t.Skipf("%s is static here; need a dynamic binary for this check", dynamic)
	}
	o := fakeOptions(t, fakeKernelCache(t), t.TempDir())
	o.AA = dynamic
	if _, err := Build(context.Background(), o); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("err = %v, want a refusal of the dynamic binary", err)
	}
}

func TestBuildChecksKernelConfig(t *testing.T) {
	cache := fakeKernelCache(t)
	cfg := filepath.Join(cache, "kernel", fakeVersion, "root", "boot", "config-"+fakeRelease)
	if err := os.WriteFile(cfg, []byte("CONFIG_RD_ZSTD=y\n# CONFIG_VIRTIO_CONSOLE is not set\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Build(context.Background(), fakeOptions(t, cache, t.TempDir()))
	if err == nil || !strings.Contains(err.Error(), "CONFIG_VIRTIO_CONSOLE=y") {
		t.Fatalf("err = %v, want the missing option named", err)
	}
}

func TestTrivialInitrd(t *testing.T) {
	init, err := os.ReadFile(fakeBin)
	if err != nil {
		t.Fatal(err)
	}
	a, err := TrivialInitrd(init)
	if err != nil {
		t.Fatal(err)
	}
	b, err := TrivialInitrd(init)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two trivial initrds of the same init differ")
	}
	files := readInitrd(t, a)
	if len(files) != 1 || files["init"] != "100755 "+string(init) {
		t.Fatalf("trivial initrd holds %d entries, want only init", len(files))
	}
	if _, err := TrivialInitrd([]byte("#!/bin/sh\n")); err == nil {
		t.Fatal("a shell script was accepted as a static init")
	}
}

// TestBuildRealKernel runs the real pipeline: Cloak's kernel compiled
// (cached under CLOAK_CACHE by `make image`), Debian's kernel from apt,
// runc from its Go module (cached), cloak-aa from this checkout. The fake
// binary stands in for cloak-agent.
func TestBuildRealKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips the real kernel build and download and the runc build")
	}
	out, err := exec.Command("apt-cache", "search", "--names-only", `^linux-image-6\.12\..*-cloud-amd64$`).Output()
	if err != nil || len(out) == 0 {
		t.Skip("apt knows no linux-image-6.12 cloud kernel: run ci/vm-deps.sh to add bookworm-backports")
	}
	dirs := []string{t.TempDir(), t.TempDir()}
	var ms []*Manifest
	for _, dir := range dirs {
		m, err := Build(context.Background(), Options{OutDir: dir, Agent: fakeBin, Progress: testWriter{t}})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	for _, f := range imageFiles {
		a, _ := os.ReadFile(filepath.Join(dirs[0], f))
		b, _ := os.ReadFile(filepath.Join(dirs[1], f))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds", f)
		}
	}
	m := ms[0]
	if !strings.HasPrefix(m.RuncVersion, "1.4.") || len(m.Debian.Modules) != 7 || m.KernelBuild.SourcePackage != "linux-source-6.12" {
		t.Errorf("runc %q, modules %v, kernel %+v", m.RuncVersion, m.Debian.Modules, m.KernelBuild)
	}
	t.Logf("kernel %s %s, root %d bytes, emulated measurement %s", m.KernelBuild.SourceVersion, m.KernelBuild.FragmentSHA256[:12],
		m.Root.Size, m.Measurements.Emulated)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// debianFirmware returns a firmware `make vm-deps` caches, or skips.
func debianFirmware(t *testing.T, name string) string {
	t.Helper()
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, ".cache/cloak/ovmf-2026.08+ds-2", name)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%s absent: run `make vm-deps`", p)
	}
	return p
}

func TestBuildSignedReferenceValues(t *testing.T) {
	fw := debianFirmware(t, "OVMF.amdsev.fd")
	cache, out := fakeKernelCache(t), t.TempDir()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(t.TempDir(), "sign.key")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)

	o := fakeOptions(t, cache, out)
	o.SNPFirmware, o.SNPMaxVCPUs, o.SignKey = fw, 4, keyFile
	m, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	s := m.Measurements.SNP
	if s == nil || len(s.Values) != 3*4 || s.Firmware.File != "OVMF.amdsev.fd" || len(s.Firmware.SHA256) != 64 {
		t.Fatalf("manifest SNP measurements %+v", s)
	}
	// Each recorded value is what measurements/snp computes for it.
	vmlinuz, _ := os.ReadFile(filepath.Join(out, KernelFile))
	fwb, _ := os.ReadFile(fw)
	for _, v := range []SNPValue{s.Values[0], s.Values[len(s.Values)-1]} {
		want, err := snp.Measure(snp.Inputs{Firmware: fwb, Kernel: vmlinuz, Cmdline: m.Cmdline,
			VCPUs: v.VCPUs, CPU: snp.CPUType(v.CPUType), GuestFeatures: 1})
		if err != nil || v.Measurement != hex.EncodeToString(want) {
			t.Errorf("%s %d vCPUs: manifest %s, measured %x (%v)", v.CPUType, v.VCPUs, v.Measurement, want, err)
		}
	}
	mf, err := ReadManifest(out)
	if err != nil || len(mf.Measurements.SNP.Values) != 12 {
		t.Fatalf("manifest with SNP values does not read back: %v", err)
	}

	b, err := os.ReadFile(filepath.Join(out, BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	vb, err := bundle.Verify(b, []crypto.PublicKey{key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	d := vb.Document
	if len(d.Values) != 1+12 || d.Values[0].Value != m.Measurements.Emulated || d.Values[0].Config.TEE != "emulated" ||
		d.Image.KernelSHA256 != m.Kernel.SHA256 || d.Values[1].Config.FirmwareSHA256 != s.Firmware.SHA256 {
		t.Errorf("bundle document %+v", d)
	}
	// The KBS accepts every value it signs (kbs/server checks them by name).
	for i, v := range d.Values {
		if err := adminapi.CheckReferenceName(v.Name, false); err != nil {
			t.Error(err)
		} else if err := adminapi.CheckReferenceValue(v.Name, i, v.Value); err != nil {
			t.Error(err)
		}
	}
	// A build without a key leaves no stale bundle beside new artifacts.
	o.SignKey = ""
	if _, err := Build(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, BundleFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale %s kept: %v", BundleFile, err)
	}
}

func TestBuildTDXNeedsAnEFIKernel(t *testing.T) {
	o := fakeOptions(t, fakeKernelCache(t), t.TempDir())
	o.TDXFirmware = debianFirmware(t, "OVMF.inteltdx.fd")
	if _, err := Build(context.Background(), o); err == nil || !strings.Contains(err.Error(), "not a PE/COFF") {
		t.Fatalf("fake (non-PE) kernel with TDX firmware: err %v", err)
	}
	o.SignKey = filepath.Join(t.TempDir(), "missing.key")
	if _, err := Build(context.Background(), o); err == nil || !strings.Contains(err.Error(), "signing key") {
		t.Fatalf("missing signing key: err %v", err)
	}
}

// A dynamic runc left in the cache by something else is not used: it is
// removed and rebuilt (here the rebuild fails fast with the module proxy
// off, which shows it was attempted).
func TestCachedRuncRebuildsDynamic(t *testing.T) {
	dynamic := "/bin/true"
	if b, err := os.ReadFile(dynamic); err != nil || checkStatic(b) == nil {
		t.Skipf("%s is missing or static here; need a dynamic binary for this check", dynamic)
	}
	t.Setenv("GOPROXY", "off")
	cache := t.TempDir()
	const version = "v0.0.0-cloak-test"
	bin := filepath.Join(cache, "runc", version, "runc")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(dynamic)
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	var said []string
	progress := func(f string, a ...any) { said = append(said, fmt.Sprintf(f, a...)) }
	got, err := cachedRunc(context.Background(), cache, version, progress)
	if err == nil {
		t.Fatalf("cachedRunc = %s, want the rebuild (GOPROXY=off) to fail", got)
	}
	if !strings.Contains(err.Error(), "build runc") {
		t.Errorf("err = %v, want the rebuild's error", err)
	}
	if !strings.Contains(strings.Join(said, "\n"), "not a static executable") {
		t.Errorf("progress = %q, want it to say why the cached runc was not used", said)
	}
	if _, err := os.Stat(bin); !os.IsNotExist(err) {
		t.Errorf("dynamic runc still cached (stat err %v)", err)
	}
}
