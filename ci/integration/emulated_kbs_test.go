package integration

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	emulatedsnp "github.com/cloak-containers/cloak/emulated/snp"
	"github.com/cloak-containers/cloak/kbs/keywrap"
)

// TestEmulatedSNPThroughKBS runs a pod whose image is encrypted, through
// containerd and the cloak shim with tee = "emulated": the guest attests to
// a real KBS with SEV-SNP reports from the shim's emulated secure
// processor, and the KBS verifies them with its SNP verifier against the
// emulated root it was told to trust (--snp-extra-root). The default
// resource policy refuses emulated evidence with its reason; a policy that
// allows it releases the key, the guest decrypts and runs the image; a
// launch measurement that is not the guest image's withholds it.
func TestEmulatedSNPThroughKBS(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e, imageDir, registryHost, ref := containerdWithBusybox(t)
	dir := t.TempDir()
	k := startEmulatedKBS(t, imageDir, dir, hostFromGuest, "default/image-key/emu")
	ctl, chainDir, kekPath, initdataFile := k.ctl, k.chainDir, k.kekPath, k.initdataFile

	wrapSock := filepath.Join(dir, "wrap.sock")
	serveUntilDone(t, func(ctx context.Context) error { return keywrap.Serve(ctx, wrapSock, nil) })
	waitSocket(t, wrapSock)
	useProvider(wrapSock)
	secret := pushEncryptedBusybox(t, registryHost, "secret-emulated", kekPath, "kbs:///default/image-key/emu")

	vms := newCloakVMs(t, imageDir, registryHost)
	cfg := vms.config(t, fmt.Sprintf("tee = \"emulated\"\nemulated_snp_dir = %q\n[kbs]\ninitdata_file = %q", chainDir, initdataFile))
	// The container record names plain busybox (containerd cannot unpack
	// an image it cannot decrypt); the guest pulls the encrypted one.
	run := func(id string) ctrResult {
		t.Helper()
		r, _ := e.ctr(t, nil, "run", "--rm", "--runtime", cloakRuntime, "--runtime-config-path", cfg,
			"--annotation", "io.cloak.image="+secret, ref, id, "/bin/cat", "/etc/recipe.txt")
		return r
	}

	t.Run("default policy refuses emulated evidence", func(t *testing.T) {
		r := run("emu-default")
		if r.code == 0 || !strings.Contains(r.stderr, "evidence comes from an emulated TEE") {
			t.Fatalf("exit %d, stderr %q; want the KBS's refusal of emulated evidence", r.code, r.stderr)
		}
	})

	k.allowEmulated(t)

	t.Run("allowed: the guest decrypts and runs the image", func(t *testing.T) {
		r := run("emu-allowed")
		if r.code != 0 || r.stdout != "the secret recipe\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("another launch measurement withholds the key", func(t *testing.T) {
		mustRun(t, nil, "kbsctl", ctl("reference-value", "set", "snp_launch_measurement", strings.Repeat("00", 48))...)
		r := run("emu-measurement")
		if r.code == 0 || !strings.Contains(r.stderr, "not affirming") {
			t.Fatalf("exit %d, stderr %q; want the key withheld because the attestation is not affirming", r.code, r.stderr)
		}
	})

	audit := mustRun(t, nil, "kbsctl", ctl("audit", "--output", "json", "--limit", "1000")...)
	for _, want := range []string{`"tee": "snp"`, `snp.measurement`, `snp.emulated`} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit lacks %s", want)
		}
	}
}

// emulatedKBS is a real KBS (the binary) that trusts a fresh emulated
// SEV-SNP root, holds one image key, and has as reference values the guest
// image's emulated launch measurement and the digest of a pod initdata
// naming the KBS at guestHost (where the guest reaches the KBS's port).
type emulatedKBS struct {
	kbs                             *kbsProc
	ctl                             func(args ...string) []string
	chainDir, kekPath, initdataFile string
}

func startEmulatedKBS(t *testing.T, imageDir, dir, guestHost, keyPath string) *emulatedKBS {
	t.Helper()
	k := &emulatedKBS{chainDir: filepath.Join(dir, "emulated-snp"), initdataFile: filepath.Join(dir, "initdata.toml")}
	if _, err := emulatedsnp.LoadOrCreate(k.chainDir); err != nil {
		t.Fatal(err)
	}
	adminKey, adminPub := filepath.Join(dir, "admin.key"), filepath.Join(dir, "admin.pub")
	mustRun(t, nil, "kbsctl", "keygen", "--private-key", adminKey, "--public-key", adminPub)
	// The emulated chain publishes no CRL, and the test reaches no AMD
	// server: collateral offline (an empty directory), CRL when available.
	k.kbs = startKBSBinary(t, filepath.Join(dir, "kbs"), "--admin-public-key", adminPub, "--tls-san", guestHost,
		"--snp-extra-root", filepath.Join(k.chainDir, "cert_chain.pem"),
		"--collateral-offline", "--collateral-dir", t.TempDir(), "--snp-crl", "if-available")
	k.ctl = func(args ...string) []string {
		return append([]string{"--url", k.kbs.url, "--cacert", k.kbs.ca, "--admin-key", adminKey}, args...)
	}
	var kek []byte
	kek, k.kekPath = newKEK(t, dir)
	mustRun(t, kek, "kbsctl", k.ctl("resource", "set", keyPath, "--file", "-")...)

	raw, err := os.ReadFile(filepath.Join(imageDir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var manifest struct {
		Measurements struct{ Emulated string } `json:"measurements"`
	}
	if err := json.Unmarshal(raw, &manifest); err != nil || manifest.Measurements.Emulated == "" {
		t.Fatalf("manifest.json has no emulated measurement (%v)", err)
	}
	mustRun(t, nil, "kbsctl", k.ctl("reference-value", "set", "snp_launch_measurement", manifest.Measurements.Emulated)...)
	caPEM, err := os.ReadFile(k.kbs.ca)
	if err != nil {
		t.Fatal(err)
	}
	initdata := initdataFor("https://"+net.JoinHostPort(guestHost, k.port(t)), caPEM)
	digest := sha512.Sum384(initdata)
	mustRun(t, nil, "kbsctl", k.ctl("reference-value", "set", "init_data", hex.EncodeToString(digest[:]))...)
	if err := os.WriteFile(k.initdataFile, initdata, 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

// port is the KBS's port on the host's loopback.
func (k *emulatedKBS) port(t *testing.T) string {
	u, err := url.Parse(k.kbs.url)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

// allowEmulated installs the development resource policy that releases
// keys to emulated guests the attestation policy affirms but for the emulated
// hardware (status warning, hardware 32; CI only), with
// reasons: policy/examples/allow-emulated.rego, which make demo installs too.
func (k *emulatedKBS) allowEmulated(t *testing.T) {
	t.Helper()
	mustRun(t, nil, "kbsctl", k.ctl("resource-policy", "set", "--file", "../../policy/examples/allow-emulated.rego")...)
}
