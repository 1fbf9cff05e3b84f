package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/agentapi"
	aatpm "github.com/cloak-containers/cloak/attestation-agent/evidence/tpm"
	"github.com/cloak-containers/cloak/kbs/keywrap"
	kbstpm "github.com/cloak-containers/cloak/kbs/verifier/tpm"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// bootVTPM boots the guest image on q35 with a swtpm vTPM whose state lives
// in stateDir (manufactured by the launcher with the CA's swtpm_setup
// config). The VM is stopped when t ends.
func bootVTPM(t *testing.T, stateDir, setupConfig string) *qemu.VM {
	t.Helper()
	dir := guestImage(t)
	vm, _ := bootVMConfig(t, imageBoot(t, dir), func(c *qemu.Config) {
		c.TPM = qemu.VTPM{StateDir: stateDir, SetupConfig: setupConfig}
	})
	return vm
}

// vtpmKBS is a real KBS whose tpm verifier trusts the AKs of aksDir and EK
// certificates from the swtpm CA, holding the image key as
// default/image-key/vtpm, with the pod's initdata (which names this KBS as
// the guest reaches it) and its PCR 8 value as reference values.
type vtpmKBS struct {
	kbs      *kbsProc
	initdata []byte
	ctl      func(args ...string) []string
}

func startVTPMKBS(t *testing.T, dir string, ca *swtpmCA, aksDir string, kek []byte) *vtpmKBS {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	adminKey, adminPub := filepath.Join(dir, "admin.key"), filepath.Join(dir, "admin.pub")
	mustRun(t, nil, "kbsctl", "keygen", "--private-key", adminKey, "--public-key", adminPub)
	kbs := startKBSBinary(t, filepath.Join(dir, "kbs"), "--admin-public-key", adminPub, "--tls-san", hostFromGuest,
		"--tpm-trusted-aks", aksDir,
		"--tpm-ek-roots", filepath.Join(ca.dir, "ca", "swtpm-localca-rootca-cert.pem"),
		"--tpm-ek-intermediates", filepath.Join(ca.dir, "ca", "issuercert.pem"))
	k := &vtpmKBS{kbs: kbs, ctl: func(args ...string) []string {
		return append([]string{"--url", kbs.url, "--cacert", kbs.ca, "--admin-key", adminKey}, args...)
	}}
	mustRun(t, kek, "kbsctl", k.ctl("resource", "set", "default/image-key/vtpm", "--file", "-")...)
	caPEM, err := os.ReadFile(kbs.ca)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(kbs.url)
	if err != nil {
		t.Fatal(err)
	}
	k.initdata = initdataFor("https://"+hostFromGuest+":"+u.Port(), caPEM)
	digest := sha512.Sum384(k.initdata)
	mustRun(t, nil, "kbsctl", k.ctl("reference-value", "set", "init_data", hex.EncodeToString(digest[:]))...)
	// The guest extends PCR 8 once with the initdata digest before it
	// attests: executables are appraised against that value.
	pcr8 := kbstpm.InitdataPCRValue(digest[:])
	mustRun(t, nil, "kbsctl", k.ctl("reference-value", "set", "tpm_pcr08", hex.EncodeToString(pcr8[:]))...)
	policy := filepath.Join(dir, "tpm.rego")
	if err := os.WriteFile(policy, []byte(`package policy

import rego.v1

# Release the image key only to tpm evidence the attestation policy affirms.
default allow := false

allow if {
	data["resource-path"] == "default/image-key/vtpm"
	count(input.submods) > 0
	every submod in input.submods {
		submod["ear.status"] == "affirming"
		submod["ear.veraison.annotated-evidence"].tpm
	}
}

reasons contains sprintf("attestation status of %s is %s, not affirming", [name, submod["ear.status"]]) if {
	some name, submod in input.submods
	submod["ear.status"] != "affirming"
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, nil, "kbsctl", k.ctl("resource-policy", "set", "--file", policy)...)
	return k
}

// audit is the KBS's audit log.
func (k *vtpmKBS) audit(t *testing.T) []adminapi.AuditEntry {
	t.Helper()
	var page adminapi.AuditPage
	if err := json.Unmarshal([]byte(mustRun(t, nil, "kbsctl", k.ctl("audit", "--output", "json", "--limit", "1000")...)), &page); err != nil {
		t.Fatalf("kbsctl audit --output json: %v", err)
	}
	return page.Entries
}

// writeAK writes der (a DER public key) as a PEM .pub file in a new
// trusted-AKs directory.
func writeAK(t *testing.T, dir string, der []byte) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "ak.pub"), string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	return dir
}

// TestVTPMPod runs an encrypted image in a pod VM with a swtpm vTPM, end to
// end with the real KBS: the host manufactures the TPM state (swtpm_setup
// with a local CA, as the launcher does) and reads its AK off it, as an
// admin enrolling the machine would. A KBS that trusts that AK and the CA
// releases the image key to the guest's tpm evidence (EK chained to the CA,
// quote over the KBS nonce, PCR 8 = the initdata digest extended once), and
// the container prints the secret. A KBS that enrols another AK refuses the
// evidence, naming the AK, and PullImage fails with KEY_UNAVAILABLE.
func TestVTPMPod(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	dir := t.TempDir()
	ca := newSwtpmCA(t, filepath.Join(dir, "ca"))
	state := filepath.Join(dir, "tpm")
	ca.manufacture(t, state)

	// Enrolment: read the AK off the state with swtpm (stopped when the
	// subtest ends, before a VM opens the state).
	var akDER []byte
	t.Run("read AK", func(t *testing.T) {
		var err error
		if akDER, err = aatpm.NewTransport(startSwtpm(t, state), "").AKPublic(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	if akDER == nil {
		t.FailNow()
	}
	akPub, err := x509.ParsePKIXPublicKey(akDER)
	if err != nil {
		t.Fatal(err)
	}
	akDigest, err := kbstpm.AKDigest(akPub)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherDER, err := x509.MarshalPKIXPublicKey(&other.PublicKey)
	if err != nil {
		t.Fatal(err)
	}

	kek, kekPath := newKEK(t, dir)
	enrolled := startVTPMKBS(t, filepath.Join(dir, "enrolled"), ca, writeAK(t, filepath.Join(dir, "aks"), akDER), kek)
	unenrolled := startVTPMKBS(t, filepath.Join(dir, "unenrolled"), ca, writeAK(t, filepath.Join(dir, "other-aks"), otherDER), kek)

	wrapSock := filepath.Join(dir, "wrap.sock")
	serveUntilDone(t, func(ctx context.Context) error { return keywrap.Serve(ctx, wrapSock, nil) })
	waitSocket(t, wrapSock)
	useProvider(wrapSock)
	reg := startRegistry(t)
	image := pushEncryptedBusybox(t, reg, "vtpm-secret", kekPath, "kbs:///default/image-key/vtpm")

	t.Run("enrolled AK: the key is released", func(t *testing.T) {
		vm := bootVTPM(t, state, ca.setupConfig)
		c := connectAgent(t, vm)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, err := c.CreateSandbox(ctx, sandboxRequest(enrolled.initdata)); err != nil {
			t.Fatalf("CreateSandbox on a vTPM guest: %v", err)
		}
		pulled, err := c.PullImage(ctx, &agentapi.PullImageRequest{Image: image, Registry: registryOptions(reg)})
		if err != nil {
			t.Fatalf("PullImage of the encrypted image: %v\nkbs log:\n%s", err, tailLines(enrolled.kbs.log.String(), 20))
		}
		if !pulled.Encrypted {
			t.Errorf("PullImage answer %+v: want encrypted", pulled)
		}
		wait := runContainer(t, ctx, c, "secret", image, "/bin/cat", "/etc/recipe.txt")
		if out, code := wait(); out != "the secret recipe\n" || code != 0 {
			t.Fatalf("container from the decrypted image: output %q exit %d", out, code)
		}
	})
	if t.Failed() {
		return
	}

	// The KBS appraised tpm evidence from the enrolled AK, PCR 8 included.
	var attested, released bool
	for _, e := range enrolled.audit(t) {
		switch {
		case e.Kind == adminapi.KindAttest && e.Tee == "tpm" && e.Verdict == "affirming":
			for _, f := range e.Findings {
				if f.Claim == "tpm.pcr08" && f.OK {
					attested = true
				}
			}
		case e.Kind == adminapi.KindRelease && e.Resource == "default/image-key/vtpm" && e.Verdict == "allow":
			released = true
		}
	}
	if !attested || !released {
		t.Errorf("audit of the enrolling KBS: affirming tpm attestation with PCR 8 matched %v, release %v; want both", attested, released)
	}

	t.Run("AK not enrolled: the key is withheld", func(t *testing.T) {
		vm := bootVTPM(t, state, ca.setupConfig)
		c := connectAgent(t, vm)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, err := c.CreateSandbox(ctx, sandboxRequest(unenrolled.initdata)); err != nil {
			t.Fatalf("CreateSandbox on a vTPM guest: %v", err)
		}
		_, err := c.PullImage(ctx, &agentapi.PullImageRequest{Image: image, Registry: registryOptions(reg)})
		if err == nil {
			t.Fatal("PullImage succeeded though the KBS does not trust the guest's AK")
		}
		want := hex.EncodeToString(akDigest[:]) + " is not enrolled"
		if reasonOf(err) != agentapi.ReasonKeyUnavailable || !strings.Contains(err.Error(), want) {
			t.Errorf("PullImage = %v (reason %q), want %s quoting the KBS's %q", err, reasonOf(err), agentapi.ReasonKeyUnavailable, want)
		}
		t.Logf("PullImage refused: %v", err)
	})
	for _, e := range unenrolled.audit(t) {
		if e.Kind == adminapi.KindRelease && e.Verdict == "allow" {
			t.Errorf("the KBS that does not enrol the AK released %s", e.Resource)
		}
	}
}
