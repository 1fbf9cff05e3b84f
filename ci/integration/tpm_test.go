package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/cloak-containers/cloak/api/kbstypes"
	aatpm "github.com/cloak-containers/cloak/attestation-agent/evidence/tpm"
	"github.com/cloak-containers/cloak/kbs/verifier"
	kbstpm "github.com/cloak-containers/cloak/kbs/verifier/tpm"
)

// swtpmCA is a swtpm local CA in a test-owned directory: swtpm_setup asks
// it for EK certificates.
type swtpmCA struct {
	dir         string
	setupConfig string // swtpm_setup --config
}

// newSwtpmCA writes swtpm_setup and swtpm-localca configurations under dir;
// the CA's keys are created at the first swtpm_setup.
func newSwtpmCA(t testing.TB, dir string) *swtpmCA {
	t.Helper()
	for _, tool := range []string{"swtpm", "swtpm_setup", "swtpm_localca"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian packages swtpm, swtpm-tools; ci/vm-deps.sh installs them): %v", tool, err)
		}
	}
	ca := &swtpmCA{dir: dir, setupConfig: filepath.Join(dir, "swtpm_setup.conf")}
	if err := os.MkdirAll(filepath.Join(dir, "ca"), 0o700); err != nil {
		t.Fatal(err)
	}
	localca := filepath.Join(dir, "swtpm-localca.conf")
	writeFile(t, localca, strings.Join([]string{
		"statedir = " + filepath.Join(dir, "ca"),
		"signingkey = " + filepath.Join(dir, "ca", "signkey.pem"),
		"issuercert = " + filepath.Join(dir, "ca", "issuercert.pem"),
		"certserial = " + filepath.Join(dir, "ca", "certserial"),
	}, "\n")+"\n")
	opts := filepath.Join(dir, "swtpm-localca.options")
	writeFile(t, opts, "--platform-manufacturer Cloak\n--platform-version 1\n--platform-model QEMU\n")
	writeFile(t, ca.setupConfig, strings.Join([]string{
		"create_certs_tool = /usr/bin/swtpm_localca",
		"create_certs_tool_config = " + localca,
		"create_certs_tool_options = " + opts,
		"active_pcr_banks = sha256",
	}, "\n")+"\n")
	return ca
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// manufacture runs swtpm_setup: a TPM 2.0 state in stateDir with an RSA EK
// and its certificate in NV, signed by the CA.
func (ca *swtpmCA) manufacture(t testing.TB, stateDir string) {
	t.Helper()
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", stateDir, "--config", ca.setupConfig,
		"--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--pcr-banks", "sha256").CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
}

// pools returns the CA's root and its issuing (intermediate) certificate.
func (ca *swtpmCA) pools(t testing.TB) (roots, intermediates *x509.CertPool) {
	t.Helper()
	roots, intermediates = x509.NewCertPool(), x509.NewCertPool()
	for pool, file := range map[*x509.CertPool]string{roots: "swtpm-localca-rootca-cert.pem", intermediates: "issuercert.pem"} {
		b, err := os.ReadFile(filepath.Join(ca.dir, "ca", file))
		if err != nil {
			t.Fatal(err)
		}
		if !pool.AppendCertsFromPEM(b) {
			t.Fatalf("%s holds no PEM certificate", file)
		}
	}
	return roots, intermediates
}

// startSwtpm runs swtpm on a unix socket for stateDir and stops it (by PID)
// when the test ends.
func startSwtpm(t testing.TB, stateDir string) (open func() (transport.TPMCloser, error)) {
	t.Helper()
	sock := filepath.Join(stateDir, "tpm.sock")
	ctrl := filepath.Join(stateDir, "ctrl.sock")
	var log bytes.Buffer
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+stateDir,
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+ctrl,
		"--flags", "not-need-init,startup-clear")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("swtpm exited: %s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm did not create %s: %s", sock, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return func() (transport.TPMCloser, error) { return linuxudstpm.Open(sock) }
}

// TestTPMSwtpmEvidence runs the attester against a real software TPM whose
// EK certificate comes from swtpm's local CA, and verifies its evidence with
// the KBS's verifier: accepted as it is, refused for another nonce, another
// CA, an unenrolled AK, tampered PCRs, an initdata digest the guest did not
// extend, and accepted once the guest extends it.
func TestTPMSwtpmEvidence(t *testing.T) {
	dir := t.TempDir()
	ca := newSwtpmCA(t, filepath.Join(dir, "ca"))
	state := filepath.Join(dir, "tpm")
	ca.manufacture(t, state)
	roots, intermediates := ca.pools(t)
	provider := aatpm.NewTransport(startSwtpm(t, state), "")
	ctx := context.Background()

	// Enrolment: the admin reads the AK off the machine.
	akDER, err := provider.AKPublic(ctx)
	if err != nil {
		t.Fatal(err)
	}
	akPub, err := x509.ParsePKIXPublicKey(akDER)
	if err != nil {
		t.Fatal(err)
	}
	akDigest, err := kbstpm.AKDigest(akPub)
	if err != nil {
		t.Fatal(err)
	}
	v, err := kbstpm.New(kbstpm.Config{TrustedAKs: [][32]byte{akDigest}, EKRoots: roots, EKIntermediates: intermediates})
	if err != nil {
		t.Fatal(err)
	}

	rd := tpmReportData(t, "n1")
	ev, err := provider.Evidence(ctx, rd)
	if err != nil {
		t.Fatal(err)
	}
	var doc aatpm.Evidence
	if err := json.Unmarshal(ev, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.EKCert == "" || len(doc.Quote.PCRs) != 24 || doc.AKTPMPublic == "" {
		t.Fatalf("evidence lacks EK certificate, PCRs or AK template: %s", ev)
	}
	// The TPM quotes the 48-byte digest cut to 32 bytes, as
	// guest-components' TPM attester does (TPM_REPORT_DATA_SIZE = 32).
	if quoted, err := kbstpm.QuotedReportData(ev); err != nil || !bytes.Equal(quoted, rd[:kbstypes.TPMReportDataSize]) {
		t.Fatalf("quoted extraData = %x (%v), want the digest's first 32 bytes %x", quoted, err, rd[:kbstypes.TPMReportDataSize])
	}

	claims, err := v.Verify(ctx, ev, rd, nil)
	if err != nil {
		t.Fatalf("genuine swtpm evidence refused: %v", err)
	}
	ek, _ := claims["ek"].(map[string]any)
	if ek["verified"] != true || claims["ak_template_checked"] != true || claims["pcr00"] == nil {
		t.Fatalf("claims = %v", claims)
	}
	t.Logf("claims: ek issuer %v, pcr08 %v", ek["issuer"], claims["pcr08"])

	refused := func(name string, v *kbstpm.Verifier, ev []byte, rd, initdata []byte, want string) {
		t.Helper()
		_, err := v.Verify(ctx, ev, rd, initdata)
		var ce *verifier.CheckError
		if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want a CheckError containing %q", name, err, want)
		}
	}
	refused("other nonce", v, ev, tpmReportData(t, "n2"), nil, "report data mismatch")

	otherCA := newSwtpmCA(t, filepath.Join(dir, "other-ca"))
	otherCA.manufacture(t, filepath.Join(dir, "other-tpm"))
	otherRoots, otherInter := otherCA.pools(t)
	vOther, err := kbstpm.New(kbstpm.Config{TrustedAKs: [][32]byte{akDigest}, EKRoots: otherRoots, EKIntermediates: otherInter})
	if err != nil {
		t.Fatal(err)
	}
	refused("EK from another CA", vOther, ev, rd, nil, "does not chain to the configured EK roots")

	vUnknown, err := kbstpm.New(kbstpm.Config{TrustedAKs: [][32]byte{sha256.Sum256([]byte("other AK"))}})
	if err != nil {
		t.Fatal(err)
	}
	refused("unknown AK", vUnknown, ev, rd, nil, "is not enrolled")

	tampered := doc
	tampered.Quote.PCRs = append([]string(nil), doc.Quote.PCRs...)
	tampered.Quote.PCRs[8] = strings.Repeat("ab", 32)
	tb, _ := json.Marshal(tampered)
	refused("tampered PCR", v, tb, rd, nil, "PCR values sent hash to")

	// Initdata: refused until the guest extends PCR 8 with the digest.
	initdata := sha256.Sum256([]byte("version = \"0.1.0\"\n"))
	refused("initdata not extended", v, ev, rd, initdata[:], "did not bind this initdata")
	if err := provider.ExtendInitdata(ctx, initdata[:]); err != nil {
		t.Fatal(err)
	}
	rd3 := tpmReportData(t, "n3")
	ev3, err := provider.Evidence(ctx, rd3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, ev3, rd3, initdata[:]); err != nil {
		t.Fatalf("evidence after extending the initdata digest refused: %v", err)
	}

	// kbsctl checks the same evidence offline with the KBS's code: the EK
	// chain and the AK list come from --collateral.
	coll := filepath.Join(dir, "collateral")
	if err := os.MkdirAll(filepath.Join(coll, "tpm", "trusted-aks"), 0o700); err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{"swtpm-localca-rootca-cert.pem": "ek-roots.pem", "issuercert.pem": "ek-intermediates.pem"} {
		b, err := os.ReadFile(filepath.Join(ca.dir, "ca", src))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(coll, "tpm", dst), string(b))
	}
	writeFile(t, filepath.Join(coll, "tpm", "trusted-aks", "ak.pub"), string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: akDER})))
	evFile, tamperedFile := filepath.Join(dir, "evidence.json"), filepath.Join(dir, "tampered.json")
	writeFile(t, evFile, string(ev))
	writeFile(t, tamperedFile, string(tb))
	for file, wantCode := range map[string]int{evFile: 0, tamperedFile: 1} {
		out, err := exec.Command(filepath.Join(binDir, "kbsctl"), "evidence", "verify", "--tee", "tpm", "--file", file, "--collateral", coll).CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != wantCode {
			t.Errorf("kbsctl evidence verify --tee tpm --file %s: exit %d, want %d\n%s", filepath.Base(file), code, wantCode, out)
		}
		if wantCode == 0 && !strings.Contains(string(out), "pcr00") {
			t.Errorf("kbsctl printed no PCR claims:\n%s", out)
		}
	}

	// The EK certificate the attester read is the one swtpm_setup stored.
	block, _ := pem.Decode([]byte(doc.EKCert))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: otherRoots, Intermediates: otherInter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Error("EK certificate verifies against the other CA")
	}
}

// tpmReportData is the KBS binding of nonce and a fixed TEE key, the
// 48-byte digest the KBS hands its verifiers and the guest its attester.
func tpmReportData(t testing.TB, nonce string) []byte {
	t.Helper()
	rd, err := kbstypes.RuntimeDataDigest("", nonce, json.RawMessage(`{"kty":"EC","crv":"P-256","x":"x","y":"y"}`))
	if err != nil {
		t.Fatal(err)
	}
	return rd
}
