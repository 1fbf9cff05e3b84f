package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// cloakSnapshotter is the proxy plugin name the tests give cloak-snapshotter.
const cloakSnapshotter = "cloak"

// secretInLayer is a file's content in the busybox test layer
// (busyboxTar): found on the host only if the host unpacked the layer.
const secretInLayer = "the secret recipe"

// snapshotterProc is a cloak-snapshotter process owned by one test.
type snapshotterProc struct {
	address, root string
}

// startSnapshotter builds and starts cloak-snapshotter; the cleanup stops it
// with SIGTERM (by PID) and checks that it exits cleanly and removes its
// socket.
func startSnapshotter(t *testing.T) *snapshotterProc {
	t.Helper()
	binDir := t.TempDir()
	build := exec.Command("go", "build", "-o", binDir+"/", "./cmd/cloak-snapshotter")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build cloak-snapshotter: %v\n%s", err, out)
	}
	// Short: unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "csnap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	p := &snapshotterProc{address: filepath.Join(sockDir, "s.sock"), root: filepath.Join(t.TempDir(), "root")}
	logPath := filepath.Join(t.TempDir(), "snapshotter.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(binDir, "cloak-snapshotter"), "--address", p.address, "--root", p.root, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("cloak-snapshotter after SIGTERM: %v, want exit 0", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("cloak-snapshotter did not stop on SIGTERM; killing it")
			_ = cmd.Process.Kill()
			<-exited
		}
		if _, err := os.Lstat(p.address); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket %s left after SIGTERM (lstat: %v)", p.address, err)
		}
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("cloak-snapshotter log (tail):\n%s", tailLines(string(b), 60))
			}
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", p.address); err == nil {
			c.Close()
			return p
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("cloak-snapshotter exited at start (%v):\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("cloak-snapshotter did not listen within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// layerFiles lists the non-directory entries under the snapshotter's
// snapshot directories: files a host-side unpack would have written.
func (p *snapshotterProc) layerFiles(t *testing.T) (files, dirs []string) {
	t.Helper()
	base := filepath.Join(p.root, "snapshots")
	err := filepath.WalkDir(base, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case path == base:
		case d.IsDir():
			if filepath.Dir(path) == base {
				dirs = append(dirs, d.Name())
			}
		default:
			files = append(files, strings.TrimPrefix(path, base+"/"))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", base, err)
	}
	return files, dirs
}

// waitSnapshots waits until the snapshotter's root holds n snapshot
// directories (containerd removes snapshots at garbage collection, just after
// the call that released them) and fails if any holds a file.
func (p *snapshotterProc) waitSnapshots(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		files, dirs := p.layerFiles(t)
		if len(files) != 0 {
			t.Errorf("snapshotter root holds layer files %v", files)
			return
		}
		if len(dirs) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("snapshotter root holds snapshots %v, want %d", dirs, n)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// guestPullConfig is the containerd configuration that makes the cloak
// snapshotter usable: the proxy plugin, and an unpack platform for it in the
// transfer service (which ctr and CRI pull through); overlayfs stays the
// default.
func guestPullConfig(address string) string {
	platform := "linux/" + runtime.GOARCH
	return fmt.Sprintf(`[proxy_plugins.%[1]s]
  type = "snapshot"
  address = %[2]q
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %[3]q
    snapshotter = "overlayfs"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %[3]q
    snapshotter = %[1]q
`, cloakSnapshotter, address, platform)
}

// imageBlobs are the digests of ref's manifest, config and layers, read
// from the registry.
type imageBlobs struct {
	manifest, config string
	layers           []string
}

func registryBlobs(t *testing.T, ref string) imageBlobs {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatalf("read %s from the registry: %v", ref, err)
	}
	var b imageBlobs
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	b.manifest = d.String()
	c, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	b.config = c.String()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		b.layers = append(b.layers, ld.String())
	}
	if len(b.layers) == 0 {
		t.Fatalf("%s has no layers: the test image is wrong", ref)
	}
	return b
}

// contentDigests lists the blobs in containerd's content store.
func contentDigests(t *testing.T, e *containerdEnv) map[string]bool {
	t.Helper()
	out := e.mustCtr(t, "content", "ls", "--quiet").stdout
	got := map[string]bool{}
	for _, d := range strings.Fields(out) {
		got[d] = true
	}
	return got
}

// filesContaining lists files under root whose content holds needle.
func filesContaining(t *testing.T, root, needle string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte(needle)) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return found
}

// imageCheck returns ctr image check's STATUS and UNPACKED columns for ref.
func imageCheck(t *testing.T, e *containerdEnv, snapshotter, ref string) (status, unpacked string) {
	t.Helper()
	out := e.mustCtr(t, "image", "check", "--snapshotter", snapshotter).stdout
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == ref {
			// REF TYPE DIGEST STATUS... SIZE... UNPACKED
			return strings.Join(f[3:len(f)-3], " "), f[len(f)-1]
		}
	}
	t.Fatalf("ctr image check lists no %s:\n%s", ref, out)
	return "", ""
}

// TestSnapshotterGuestPull pulls an image through a real containerd with
// cloak-snapshotter as its "cloak" proxy snapshotter: the host fetches the
// index/manifest/config only, unpacks nothing, and the cloak runtime still
// runs the image (the guest pulls it). The same pull with overlayfs stores
// the layer, so the difference is the snapshotter's doing.
func TestSnapshotterGuestPull(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	bin := containerdDeps(t)
	imageDir := guestImage(t)
	shimDir := buildShim(t)
	snap := startSnapshotter(t)
	registryHost := startRegistry(t)
	ref := pushBusybox(t, registryHost)
	blobs := registryBlobs(t, ref)
	e := startContainerdWith(t, bin, shimDir, `
  "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
`, guestPullConfig(snap.address))
	ctrdRoot := filepath.Join(filepath.Dir(e.address), "root")

	t.Run("pull skips the layers", func(t *testing.T) {
		e.mustCtr(t, "image", "pull", "--plain-http", "--snapshotter", cloakSnapshotter, ref)
		status, unpacked := imageCheck(t, e, cloakSnapshotter, ref)
		if unpacked != "true" {
			t.Errorf("ctr image check --snapshotter cloak: UNPACKED %q, want true", unpacked)
		}
		// The layer is missing by design: containerd counts it.
		if !strings.HasPrefix(status, "incomplete") {
			t.Errorf("ctr image check: STATUS %q, want incomplete (the layer blob is not on the host)", status)
		}
		content := contentDigests(t, e)
		for _, d := range []string{blobs.manifest, blobs.config} {
			if !content[d] {
				t.Errorf("content store lacks %s (manifest/config): CRI and ctr need it; have %v", d, content)
			}
		}
		for _, d := range blobs.layers {
			if content[d] {
				t.Errorf("content store holds layer %s: the host downloaded it", d)
			}
		}
		files, dirs := snap.layerFiles(t)
		if len(files) != 0 {
			t.Errorf("snapshotter root holds layer files %v", files)
		}
		if len(dirs) != len(blobs.layers) {
			t.Errorf("snapshotter root has %d snapshot dirs, want one (empty) per layer: %d", len(dirs), len(blobs.layers))
		}
		sl := e.mustCtr(t, "snapshot", "--snapshotter", cloakSnapshotter, "ls").stdout
		if !strings.Contains(sl, "Committed") {
			t.Errorf("ctr snapshot ls: no committed snapshot for the image:\n%s", sl)
		}
		if found := filesContaining(t, ctrdRoot, secretInLayer); len(found) != 0 {
			t.Errorf("the layer's file content is on the host: %v", found)
		}
	})

	t.Run("the cloak runtime runs it", func(t *testing.T) {
		runDir, err := os.MkdirTemp("", "cloakrun")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(runDir) })
		_, port, _ := net.SplitHostPort(registryHost)
		cloakConfig := filepath.Join(t.TempDir(), "cloak.toml")
		if err := os.WriteFile(cloakConfig, []byte(fmt.Sprintf(`image_dir = %q
run_dir = %q
console_log_dir = %q
agent_timeout_seconds = 120
[registry]
insecure = [%q]
mirrors = { %q = "http://%s:%s" }
`, imageDir, runDir, t.TempDir(), registryHost, registryHost, hostFromGuest, port)), 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := e.ctr(t, nil, "run", "--rm", "--snapshotter", cloakSnapshotter, "--runtime", cloakRuntime,
			"--runtime-config-path", cloakConfig, ref, "guest-pull", "cat", "/etc/recipe.txt")
		if err != nil {
			t.Fatal(err)
		}
		if r.stdout != secretInLayer+"\n" {
			t.Errorf("ctr run stdout %q, want %q (read inside the guest)", r.stdout, secretInLayer+"\n")
		}
		// The container's snapshot goes at containerd's next garbage
		// collection; the image's stay.
		snap.waitSnapshots(t, len(blobs.layers))
	})

	t.Run("removing the image empties the root", func(t *testing.T) {
		e.mustCtr(t, "image", "rm", "--sync", ref)
		snap.waitSnapshots(t, 0)
		if sl := e.mustCtr(t, "snapshot", "--snapshotter", cloakSnapshotter, "ls").stdout; strings.Contains(sl, "sha256:") {
			t.Errorf("ctr snapshot ls still lists snapshots:\n%s", sl)
		}
	})

	t.Run("overlayfs pull stores the layer", func(t *testing.T) {
		e.mustCtr(t, "image", "pull", "--plain-http", ref)
		content := contentDigests(t, e)
		for _, d := range blobs.layers {
			if !content[d] {
				t.Errorf("overlayfs pull: content store lacks layer %s", d)
			}
		}
		if found := filesContaining(t, filepath.Join(ctrdRoot, "io.containerd.snapshotter.v1.overlayfs"), secretInLayer); len(found) == 0 {
			t.Errorf("overlayfs pull: no unpacked layer file holds %q", secretInLayer)
		}
	})

	t.Run("host unpack into cloak is refused", func(t *testing.T) {
		// The image is now unpacked for overlayfs only: ctr run would unpack
		// it into the cloak snapshotter on the host.
		r, err := e.ctr(t, nil, "run", "--rm", "--snapshotter", cloakSnapshotter, ref, "host-unpack", "true")
		if err == nil {
			t.Fatalf("ctr run with a host unpack into cloak succeeded (stdout %q), want a refusal", r.stdout)
		}
		if !strings.Contains(r.stderr, "does not unpack layers on the host") {
			t.Errorf("ctr run error %q does not say why", r.stderr)
		}
		if files, _ := snap.layerFiles(t); len(files) != 0 {
			t.Errorf("snapshotter root holds layer files after the refused unpack: %v", files)
		}
	})
}

// TestSnapshotterCRIPull checks the CRI configuration docs/snapshotter.md
// gives: a CRI image pull for the cloak runtime handler goes through the cloak
// snapshotter (no layer on the host) while a pull for no handler still uses
// overlayfs. crictl sends no runtime handler in its pull request, so the pod
// config names it in the annotation containerd reads as a fallback.
func TestSnapshotterCRIPull(t *testing.T) {
	bin := containerdDeps(t)
	crictl := filepath.Join(criTools(t), "crictl")
	snap := startSnapshotter(t)
	registryHost := startRegistry(t)
	ref := pushBusybox(t, registryHost)
	blobs := registryBlobs(t, ref)

	dir := t.TempDir()
	certs := filepath.Join(dir, "certs.d")
	cni := filepath.Join(dir, "cni")
	for _, d := range []string{filepath.Join(certs, registryHost), cni} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(certs, registryHost, "hosts.toml"), []byte(fmt.Sprintf(`server = "http://%[1]s"
[host."http://%[1]s"]
  capabilities = ["pull", "resolve"]
`, registryHost)), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startContainerdWith(t, bin, buildShim(t), `
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
`, guestPullConfig(snap.address)+fmt.Sprintf(`[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = %q
  [plugins."io.containerd.cri.v1.images".runtime_platforms.cloak]
    snapshotter = %q
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    conf_dir = %q
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.cloak]
    runtime_type = %q
    snapshotter = %q
`, certs, cloakSnapshotter, cni, cloakRuntime, cloakSnapshotter))
	k8s := func(args ...string) string {
		t.Helper()
		return e.mustCtr(t, append([]string{"--namespace", "k8s.io"}, args...)...).stdout
	}
	pull := func(args ...string) {
		t.Helper()
		full := append([]string{"--runtime-endpoint", "unix://" + e.address, "--image-endpoint", "unix://" + e.address, "--timeout", "120s", "pull"}, args...)
		out, err := exec.Command(crictl, append(full, ref)...).CombinedOutput()
		if err != nil {
			t.Fatalf("crictl pull %v: %v\n%s", args, err, out)
		}
	}
	podConfig := filepath.Join(dir, "pod.json")
	if err := os.WriteFile(podConfig, []byte(`{"metadata": {"name": "guest-pull", "namespace": "default", "uid": "guest-pull-1"},
 "annotations": {"io.containerd.cri.runtime-handler": "cloak"}}`), 0o600); err != nil {
		t.Fatal(err)
	}

	pull("--pod-config", podConfig)
	content := map[string]bool{}
	for _, d := range strings.Fields(k8s("content", "ls", "--quiet")) {
		content[d] = true
	}
	if !content[blobs.manifest] || !content[blobs.config] {
		t.Errorf("CRI pull for the cloak handler: content store lacks the manifest or config: %v", content)
	}
	for _, d := range blobs.layers {
		if content[d] {
			t.Errorf("CRI pull for the cloak handler: content store holds layer %s", d)
		}
	}
	if sl := k8s("snapshot", "--snapshotter", cloakSnapshotter, "ls"); !strings.Contains(sl, "Committed") {
		t.Errorf("CRI pull for the cloak handler: no cloak snapshot:\n%s", sl)
	}
	if sl := k8s("snapshot", "--snapshotter", "overlayfs", "ls"); strings.Contains(sl, "sha256:") {
		t.Errorf("CRI pull for the cloak handler unpacked into overlayfs:\n%s", sl)
	}
	snap.waitSnapshots(t, len(blobs.layers))

	// No handler: CRI's default snapshotter, which downloads and unpacks.
	pull()
	content = map[string]bool{}
	for _, d := range strings.Fields(k8s("content", "ls", "--quiet")) {
		content[d] = true
	}
	for _, d := range blobs.layers {
		if !content[d] {
			t.Errorf("CRI pull without a handler: content store lacks layer %s", d)
		}
	}
	if sl := k8s("snapshot", "--snapshotter", "overlayfs", "ls"); !strings.Contains(sl, "Committed") {
		t.Errorf("CRI pull without a handler: nothing unpacked into overlayfs:\n%s", sl)
	}
}
