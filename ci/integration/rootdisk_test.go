package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/guest-image/build"
)

// TestVMRootDiskTampered boots the image with one byte of its root disk
// changed, in the first block of /usr/bin/runc (the build's root hash is
// still on the command line). The agent, whose blocks are intact, answers;
// the first container start makes the kernel read runc's first block,
// dm-verity finds it does not match the hash tree, and the guest panics
// (panic_on_corruption): no container starts and the VM ends.
func TestVMRootDiskTampered(t *testing.T) {
	dir := guestImage(t)
	m, err := build.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(filepath.Join(dir, build.RootFile))
	if err != nil {
		t.Fatal(err)
	}
	runc := rootFile(t, img[:m.Root.DataSize], "usr/bin/runc")
	off := bytes.Index(img[:m.Root.DataSize], runc[:4096])
	if off < 0 || bytes.Contains(img[off+1:m.Root.DataSize], runc[:4096]) {
		t.Fatalf("runc's first block is not exactly once in the root disk (at %d)", off)
	}
	img[off+100] ^= 0x01 // inside runc's ELF program headers, read by exec
	tampered := filepath.Join(t.TempDir(), build.RootFile)
	if err := os.WriteFile(tampered, img, 0o644); err != nil {
		t.Fatal(err)
	}
	g := imageBoot(t, dir)
	g.RootDisk = tampered
	vm := bootVMWith(t, g)
	c := connectAgent(t, vm)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.CreateSandbox(ctx, sandboxRequest(nil)); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	// The container's image does not matter: runc is executed before the
	// rootfs is used. A tiny local image keeps the test off the network.
	reg := startRegistry(t)
	ref := pushBusybox(t, reg)
	if _, err := c.PullImage(ctx, &agentapi.PullImageRequest{Image: ref, Registry: registryOptions(reg)}); err != nil {
		t.Fatalf("PullImage: %v", err)
	}
	_, createErr := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "c", Image: ref, OciSpec: containerSpec(t, "/bin/echo", "started")})
	if createErr == nil {
		t.Fatal("a container was created from a tampered root disk")
	}
	select {
	case <-vm.Exited():
	case <-time.After(time.Minute):
		t.Fatal("the guest kept running after reading a corrupted block")
	}
	console, err := os.ReadFile(vm.Config().ConsoleLog)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(console), "verity") || !strings.Contains(string(console), "is corrupted") {
		t.Fatalf("CreateContainer failed (%v) but the console does not show dm-verity's refusal:\n%s", createErr, tailLines(string(console), 30))
	}
	t.Logf("refused: %v; console: %s", createErr, lastLineWith(string(console), "is corrupted"))
}

// rootFile extracts one file from an EROFS image with fsck.erofs.
func rootFile(t *testing.T, fs []byte, name string) []byte {
	t.Helper()
	tmp := t.TempDir()
	p := filepath.Join(tmp, "fs.img")
	if err := os.WriteFile(p, fs, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, "x")
	if b, err := exec.Command("fsck.erofs", "--extract="+out, p).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs (apt-get install erofs-utils): %v\n%s", err, b)
	}
	b, err := os.ReadFile(filepath.Join(out, name))
	if err != nil || len(b) < 4096 {
		t.Fatalf("%s in the root disk: %d bytes, %v", name, len(b), err)
	}
	return b
}

func lastLineWith(s, sub string) string {
	lines := strings.Split(s, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], sub) {
			return strings.TrimSpace(lines[i])
		}
	}
	return ""
}
