package integration

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/kbs/keywrap"
)

// TestCRIConfidentialPod runs a confidential pod end to end through
// containerd's CRI: a pod of the cloak-emulated handler (emulated SEV-SNP)
// whose container image is ocicrypt-encrypted. The guest, on the pod
// network, attests to a real KBS (reached through a TCP proxy on the CNI
// bridge's gateway), gets the key, pulls and decrypts the image itself and
// runs it. The host never holds the image's layers, encrypted or not, nor
// any file with the plaintext.
func TestCRIConfidentialPod(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	imageDir := guestImage(t)
	dir := t.TempDir()
	// The guest reaches the KBS as criGateway (a TCP proxy in containerd's
	// namespace passes TLS through, on the KBS's own port, free there: the
	// initdata can name it before containerd starts).
	k := startEmulatedKBS(t, imageDir, dir, criGateway, "default/image-key/cri")
	k.allowEmulated(t)
	ctl, chainDir, kekPath, initdataFile := k.ctl, k.chainDir, k.kekPath, k.initdataFile

	wrapSock := filepath.Join(dir, "wrap.sock")
	serveUntilDone(t, func(ctx context.Context) error { return keywrap.Serve(ctx, wrapSock, nil) })
	waitSocket(t, wrapSock)
	useProvider(wrapSock)
	var secret string
	e := startCRI(t, criOptions{
		cloak: true, guestPull: true,
		extraImages: func(t *testing.T, registryHost string) {
			secret = pushEncryptedBusybox(t, registryHost, "secret-cri", kekPath, "kbs:///default/image-key/cri")
		},
		cloakExtra: fmt.Sprintf("emulated_snp_dir = %q\n[kbs]\ninitdata_file = %q\n", chainDir, initdataFile),
	})
	if e.snapshotterRoot == "" {
		t.Fatal("startCRI with guestPull set no cloak-snapshotter root")
	}
	serveTCPProxyIn(t, e.ns, net.JoinHostPort("0.0.0.0", k.port(t)), net.JoinHostPort("127.0.0.1", k.port(t)))

	name := "confidential"
	pod := e.podConfig(t, name, handlerCloakEmulated)
	podID := e.mustCrictl(t, "runp", "--runtime", handlerCloakEmulated, pod)
	ctr := e.writeJSON(t, "ctr-"+name+".json", map[string]any{
		"metadata": map[string]any{"name": "secret"},
		"image":    map[string]any{"image": secret},
		"command":  []string{"cat", "/etc/recipe.txt"},
		"log_path": "secret.log",
		"linux":    map[string]any{},
	})
	// crictl pulls the image first (pull-image-on-create), through the
	// cloak snapshotter: the host fetches the manifest and config only.
	id := e.mustCrictl(t, "create", podID, ctr, pod)
	e.mustCrictl(t, "start", id)
	if out := e.waitLogs(t, id, secretInLayer+"\n"); out != secretInLayer+"\n" {
		t.Errorf("crictl logs: %q, want only %q", out, secretInLayer+"\n")
	}

	// The host never held the image's layers: neither the encrypted blob
	// the registry serves nor the plaintext busybox layer it decrypts to.
	encrypted, plain := registryBlobs(t, secret), registryBlobs(t, e.busybox)
	out, err := exec.Command(filepath.Join(e.bin, "ctr"), "--address", e.address, "--namespace", "k8s.io", "content", "ls", "--quiet").Output()
	if err != nil {
		t.Fatalf("ctr content ls: %v", err)
	}
	content := strings.Fields(string(out))
	if !slices.Contains(content, encrypted.manifest) {
		t.Errorf("content store lacks the encrypted image's manifest %s: CRI did not pull it", encrypted.manifest)
	}
	for _, l := range append(encrypted.layers, plain.layers...) {
		if slices.Contains(content, l) {
			t.Errorf("content store holds layer %s of the encrypted image (encrypted or decrypted)", l)
		}
	}
	for _, root := range []string{filepath.Join(e.dir, "root"), e.snapshotterRoot} {
		if found := filesContaining(t, root, secretInLayer); len(found) != 0 {
			t.Errorf("files on the host hold the image's plaintext: %v", found)
		}
	}

	audit := mustRun(t, nil, "kbsctl", ctl("audit", "--output", "json", "--limit", "1000")...)
	for _, want := range []string{`"tee": "snp"`, `"resource": "default/image-key/cri"`, `snp.emulated`} {
		if !strings.Contains(audit, want) {
			t.Errorf("KBS audit lacks %s: the key was not released to the emulated SNP guest", want)
		}
	}
	e.mustCrictl(t, "stopp", podID)
	e.mustCrictl(t, "rmp", podID)
	e.assertClean(t)

	t.Run("another launch measurement withholds the key", func(t *testing.T) {
		mustRun(t, nil, "kbsctl", ctl("reference-value", "set", "snp_launch_measurement", strings.Repeat("00", 48))...)
		name := "confidential-refused"
		pod := e.podConfig(t, name, handlerCloakEmulated)
		podID := e.mustCrictl(t, "runp", "--runtime", handlerCloakEmulated, pod)
		// CRI's CreateContainer only records the container; the shim
		// creates the task, and the guest pulls the image, at start.
		id := e.mustCrictl(t, "create", podID, ctr, pod)
		r, err := e.crictl(t, "start", id)
		if err == nil {
			t.Errorf("crictl start of the encrypted image succeeded with a launch measurement the KBS does not expect (stdout %q)", r.stdout)
		} else if !strings.Contains(r.stderr, "not affirming") {
			t.Errorf("crictl start: exit %d, stderr %q; want the key withheld because the attestation is not affirming", r.code, r.stderr)
		}
		e.mustCrictl(t, "stopp", podID)
		e.mustCrictl(t, "rmp", podID)
		e.assertClean(t)
	})
}
