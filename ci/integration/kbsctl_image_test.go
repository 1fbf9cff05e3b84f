package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/service"
	"github.com/cloak-containers/cloak/guest-image/pull"
)

// TestKbsctlImageEncryptGuestPull checks that `kbsctl image encrypt` writes
// what a guest decrypts: the kbsctl binary encrypts a busybox image on a
// loopback registry, the KBS stores its KEK, and the guest's own pull code
// (guest-image/pull) fetches and decrypts it through cloak-aa's keyprovider,
// which attests to the KBS to get the KEK released.
func TestKbsctlImageEncryptGuestPull(t *testing.T) {
	k := startKBS(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	reg := startRegistry(t)
	plain := pushBusybox(t, reg)
	kek, kekPath := newKEK(t, dir)
	if _, err := k.admin.SetResource(ctx, "default/image-key/kbsctl", kek); err != nil {
		t.Fatal(err)
	}
	if err := k.admin.SetReferenceValue(ctx, "sample_svn", []string{"1"}); err != nil {
		t.Fatal(err)
	}
	if err := k.admin.SetResourcePolicy(ctx, []byte(devPolicy)); err != nil {
		t.Fatal(err)
	}

	encrypt := func(kid, tag string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "kbsctl"), "-o", "json", "image", "encrypt", "--insecure",
			"--key-id", kid, "--kek", kekPath, plain, reg+"/busybox:"+tag)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			// -o json: the error object is on stdout, progress on stderr.
			t.Fatalf("kbsctl image encrypt: %v\n%s%s", err, out, stderr.String())
		}
		if !strings.Contains(stderr.String(), "layer 1/1 sha256:") {
			t.Errorf("no progress on stderr: %q", stderr.String())
		}
		var res struct{ Image string }
		if err := json.Unmarshal(out, &res); err != nil || res.Image == "" {
			t.Fatalf("kbsctl output %q: %v", out, err)
		}
		return res.Image
	}
	allowed := encrypt("kbs:///default/image-key/kbsctl", "encrypted")
	unknown := encrypt("kbs:///default/image-key/absent", "encrypted-absent")

	aaSock := filepath.Join(dir, "aa", "aa.sock")
	aa, err := service.Listen(service.Config{Socket: aaSock, KBS: k.guest(t), Provider: sample.New("1")})
	if err != nil {
		t.Fatal(err)
	}
	serveUntilDone(t, aa.Serve)
	opts := pull.Options{Registry: &agentapi.RegistryOptions{InsecureRegistries: []string{reg}}, KeyProviderSocket: aaSock}

	opts.StoreDir = t.TempDir()
	img, err := pull.Pull(ctx, allowed, opts)
	if err != nil {
		t.Fatalf("guest pull of %s: %v", allowed, err)
	}
	if !img.Response.Encrypted {
		t.Errorf("pull response %+v: not marked encrypted", img.Response)
	}
	recipe, err := os.ReadFile(filepath.Join(img.Rootfs, "etc/recipe.txt"))
	if err != nil || string(recipe) != "the secret recipe\n" {
		t.Fatalf("decrypted recipe = %q, %v", recipe, err)
	}

	// A key id the KBS does not serve: the guest gets no key.
	opts.StoreDir = t.TempDir()
	_, err = pull.Pull(ctx, unknown, opts)
	var pe *pull.Error
	if !errors.As(err, &pe) || pe.Reason != agentapi.ReasonKeyUnavailable || !strings.Contains(err.Error(), "image-key/absent") {
		t.Fatalf("pull with an unknown key id: %v, want %s naming the key", err, agentapi.ReasonKeyUnavailable)
	}
}
