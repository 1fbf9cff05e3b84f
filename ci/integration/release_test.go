package integration

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/measurements/bundle"
)

// releaseBinaries are the host binaries ci/release.sh packs.
var releaseBinaries = []string{"containerd-shim-cloak-v2", "kbs", "kbsctl", "cloak", "cloak-image", "cloak-snapshotter"}

// TestRelease: make release's script packs the binaries, the guest image
// with signed reference values, the configurations, SHA256SUMS and an SPDX
// SBOM into a tarball that is the same bytes when made twice; make install
// RELEASE=... installs exactly those bytes with no Go toolchain (GO=false:
// any build would fail) and refuses a tampered tarball, installing nothing.
func TestRelease(t *testing.T) {
	image := guestImage(t)
	bins := releaseBinDir(t)
	dir := t.TempDir()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "builder.key")
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	release := func(out string) string {
		cmd := exec.Command("./ci/release.sh")
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "VERSION=v0.0.0-test", "OUT="+out, "SIGN_KEY="+key, "BIN="+bins,
			"IMAGE_DIR="+image, "SOURCE_DATE_EPOCH=1700000000")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.Output()
		if err != nil {
			t.Fatalf("ci/release.sh: %v\n%s", err, stderr.String())
		}
		return strings.TrimSpace(string(stdout))
	}
	tarball := release(filepath.Join(dir, "one"))
	if want := filepath.Join(dir, "one", "cloak-v0.0.0-test-linux-amd64.tar.gz"); tarball != want {
		t.Fatalf("release printed %q, want %q", tarball, want)
	}
	if a, b := fileSum(t, tarball), fileSum(t, release(filepath.Join(dir, "two"))); a != b {
		t.Errorf("two releases of the same inputs differ: %s and %s", a, b)
	}

	unpacked := filepath.Join(dir, "unpacked")
	mustMkdir(t, unpacked)
	mustRunCmd(t, "", "tar", "-xzf", tarball, "-C", unpacked)
	root := filepath.Join(unpacked, "cloak-v0.0.0-test-linux-amd64")
	mustRunCmd(t, root, "sha256sum", "--quiet", "--strict", "-c", "SHA256SUMS")
	for _, f := range []string{"install.sh", "sbom.spdx.json", "image/vmlinuz", "image/root.img", "image/manifest.json",
		"image/debian/vmlinuz", "image/debian/initrd.img", "config/configuration-emulated.toml"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("release lacks %s: %v", f, err)
		}
	}
	for _, b := range releaseBinaries {
		if got, want := fileSum(t, filepath.Join(root, "bin", b)), fileSum(t, filepath.Join(bins, b)); got != want {
			t.Errorf("bin/%s in the release is not the built binary", b)
		}
	}
	signed, err := os.ReadFile(filepath.Join(root, "image", "reference-values.cose"))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := bundle.Verify(signed, []crypto.PublicKey{pub}); err != nil || len(v.Document.Values) == 0 {
		t.Errorf("the release's reference values do not verify with the signing key: %v", err)
	}
	var sbom struct {
		SPDXVersion string `json:"spdxVersion"`
		Packages    []struct {
			Name string `json:"name"`
		} `json:"packages"`
	}
	if err := json.Unmarshal(mustRead(t, filepath.Join(root, "sbom.spdx.json")), &sbom); err != nil || sbom.SPDXVersion != "SPDX-2.3" {
		t.Fatalf("sbom.spdx.json: %v (version %q)", err, sbom.SPDXVersion)
	}
	names := map[string]bool{}
	for _, p := range sbom.Packages {
		names[p.Name] = true
	}
	for _, want := range []string{"kbs", "containerd-shim-cloak-v2", "github.com/containerd/containerd/v2", "go.etcd.io/bbolt"} {
		if !names[want] {
			t.Errorf("the SBOM has no package %s", want)
		}
	}

	// make install RELEASE=...: the release's bytes, nothing built.
	dest := filepath.Join(dir, "dest")
	install := func(release, dest string) (string, error) {
		cmd := exec.Command("make", "--no-print-directory", "install", "RELEASE="+release, "DESTDIR="+dest,
			"GO=false", "BIN=/nonexistent", "IMAGE_DIR=/nonexistent")
		cmd.Dir = "../.."
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := install(tarball, dest); err != nil {
		t.Fatalf("make install RELEASE=%s: %v\n%s", tarball, err, out)
	}
	for installed, src := range map[string]string{
		"usr/local/bin/kbs":                           filepath.Join(bins, "kbs"),
		"usr/local/bin/containerd-shim-cloak-v2":      filepath.Join(bins, "containerd-shim-cloak-v2"),
		"usr/share/cloak/image/root.img":              filepath.Join(image, "root.img"),
		"usr/share/cloak/image/vmlinuz":               filepath.Join(image, "vmlinuz"),
		"usr/share/cloak/image/reference-values.cose": filepath.Join(root, "image", "reference-values.cose"),
		"etc/cloak/configuration-emulated.toml":       "../../shim/config/handlers/configuration-emulated.toml",
		"usr/share/cloak/image/debian/initrd.img":     filepath.Join(image, "debian", "initrd.img"),
		"usr/share/cloak/image/manifest.json":         filepath.Join(image, "manifest.json"),
		"usr/share/cloak/containerd-config.toml":      "",
		"usr/local/bin/cloak-snapshotter":             filepath.Join(bins, "cloak-snapshotter"),
		"usr/local/bin/cloak-image":                   filepath.Join(bins, "cloak-image"),
		"usr/local/bin/kbsctl":                        filepath.Join(bins, "kbsctl"),
		"usr/local/bin/cloak":                         filepath.Join(bins, "cloak"),
		"usr/share/cloak/image/debian/vmlinuz":        filepath.Join(image, "debian", "vmlinuz"),
		"etc/cloak/configuration-snp.toml":            "../../shim/config/handlers/configuration-snp.toml",
		"etc/cloak/configuration-tdx.toml":            "../../shim/config/handlers/configuration-tdx.toml",
		"etc/cloak/configuration-cloak.toml":          "../../shim/config/handlers/configuration-cloak.toml",
	} {
		path := filepath.Join(dest, installed)
		if src == "" {
			if _, err := os.Stat(path); err != nil {
				t.Errorf("not installed: %s", installed)
			}
			continue
		}
		if fileSum(t, path) != fileSum(t, src) {
			t.Errorf("%s is not the release's bytes", installed)
		}
	}
	// The installer inside the unpacked release installs it too.
	cmd := exec.Command(filepath.Join(root, "install.sh"))
	cmd.Env = append(os.Environ(), "DESTDIR="+filepath.Join(dir, "dest-unpacked"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install.sh of the unpacked release: %v\n%s", err, out)
	}
	if fileSum(t, filepath.Join(dir, "dest-unpacked", "usr/share/cloak/image/root.img")) != fileSum(t, filepath.Join(image, "root.img")) {
		t.Error("the unpacked release's install.sh installed another root.img")
	}

	// A tampered release: one byte of kbs changed, SHA256SUMS left alone.
	kbs := filepath.Join(root, "bin", "kbs")
	b := mustRead(t, kbs)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(kbs, b, 0o755); err != nil {
		t.Fatal(err)
	}
	tampered := filepath.Join(dir, "tampered.tar.gz")
	mustRunCmd(t, "", "tar", "-czf", tampered, "-C", unpacked, "cloak-v0.0.0-test-linux-amd64")
	dest2 := filepath.Join(dir, "dest-tampered")
	out, err := install(tampered, dest2)
	if err == nil || !strings.Contains(out, "does not match its SHA256SUMS") || !strings.Contains(out, "bin/kbs") {
		t.Errorf("make install of a tampered release: err %v, output %s; want a refusal naming bin/kbs", err, out)
	}
	if _, err := os.Stat(dest2); !os.IsNotExist(err) {
		t.Errorf("a refused release installed something: %s exists", dest2)
	}
	// Without RELEASE, make install builds, and GO=false makes that fail:
	// the check above would have caught a build.
	if out, err := install("", filepath.Join(dir, "dest-build")); err == nil {
		t.Errorf("make install GO=false without RELEASE succeeded: it did not need to build?\n%s", out)
	}
}

// releaseBinDir is $CLOAK_BIN when it holds every host binary (make sets
// it), or a fresh build of them.
func releaseBinDir(t *testing.T) string {
	t.Helper()
	complete := true
	for _, b := range releaseBinaries {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			complete = false
		}
	}
	if complete {
		return binDir
	}
	dir := t.TempDir()
	args := []string{"build", "-trimpath", "-o", dir + "/"}
	for _, b := range releaseBinaries {
		args = append(args, "./cmd/"+b)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	s := sha256.Sum256(mustRead(t, path))
	return hex.EncodeToString(s[:])
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustRunCmd(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}
