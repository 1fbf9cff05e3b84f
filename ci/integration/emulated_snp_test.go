package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cloak-containers/cloak/agentpolicy"
	emulatedsnp "github.com/cloak-containers/cloak/emulated/snp"
	"github.com/cloak-containers/cloak/measurements"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// emulatedInitdata names a KBS the guest never reaches in these tests
// (cloak-aa serve contacts it only for keys).
func emulatedInitdata(comment string) []byte {
	return []byte(`# ` + comment + `
version = "0.1.0"
algorithm = "sha256"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://` + hostFromGuest + `:9"
'''
` + allowAllPolicyEntry)
}

// allowAllPolicyEntry is an initdata [data] entry with the allow-all agent
// policy: a confidential guest refuses initdata without a policy, and these
// tests are about attestation and pulls, not about what a policy allows.
var allowAllPolicyEntry = "\"policy.rego\" = '''\n" + agentpolicy.AllowAll + "'''\n"

// recorder keeps what the SP wrote to the guest.
type recorder struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.out.Write(p)
	r.mu.Unlock()
	return r.Conn.Write(p)
}

func (r *recorder) answers() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Split(strings.TrimSpace(r.out.String()), "\n")
}

// emulatedLaunch is the guest image's default boot and its emulated launch
// digest (the SNP measurement, the TDX MRTD): kernel, no initrd, and the
// command line, which carries the root disk's root hash.
func emulatedLaunch(t *testing.T) (g guestBoot, digest []byte) {
	t.Helper()
	g = imageBoot(t, guestImage(t))
	kb, err := os.ReadFile(g.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	var ib []byte
	if g.Initrd != "" {
		if ib, err = os.ReadFile(g.Initrd); err != nil {
			t.Fatal(err)
		}
	}
	return g, measurements.EmulatedLaunchDigest(kb, ib, g.Cmdline)
}

// bootWithSPPort boots g with the cloak.sp port and serves
// the port's host end with serve, recording its answers. Cleanup stops the
// VM and checks its QEMU is gone.
func bootWithSPPort(t *testing.T, g guestBoot, serve func(io.ReadWriter) error) (*qemu.VM, *recorder) {
	t.Helper()
	vm, cfg := bootVMConfig(t, g, func(c *qemu.Config) {
		c.EmulatedSP = true
	})
	conn, err := net.Dial("unix", cfg.SPSocket())
	if err != nil {
		t.Fatalf("connect to the SP port: %v", err)
	}
	rec := &recorder{Conn: conn}
	served := make(chan error, 1)
	go func() { served <- serve(rec) }()
	// Runs before bootVMConfig's cleanup stops the VM.
	t.Cleanup(func() {
		conn.Close()
		<-served
	})
	return vm, rec
}

// bootEmulatedSNP boots the guest image with the cloak.sp port and serves an
// emulated SP for it (HOST_DATA = sha256(launchInitdata)), recording the
// SP's answers.
func bootEmulatedSNP(t *testing.T, root *emulatedsnp.Root, launchInitdata []byte) (*qemu.VM, *recorder, []byte) {
	t.Helper()
	g, measurement := emulatedLaunch(t)
	hostData, err := emulatedsnp.HostDataFor(launchInitdata)
	if err != nil {
		t.Fatal(err)
	}
	launch := emulatedsnp.Launch{HostData: hostData}
	copy(launch.Measurement[:], measurement)
	sp, err := emulatedsnp.New(root, launch)
	if err != nil {
		t.Fatal(err)
	}
	vm, rec := bootWithSPPort(t, g, sp.Serve)
	return vm, rec, measurement
}

// TestEmulatedSNP boots the guest with the emulated SP: CreateSandbox's
// initdata check makes the guest request a report over cloak.sp, the report
// it got verifies with go-sev-guest against the emulated root (and not
// against AMD's), and binds the launch measurement, sha256(initdata) and the
// guest's fresh report data. Initdata changed after launch is refused.
func TestEmulatedSNP(t *testing.T) {
	root, err := emulatedsnp.LoadOrCreate(filepath.Join(t.TempDir(), "emulated-snp"))
	if err != nil {
		t.Fatal(err)
	}
	amd := &trust.AMDRootCerts{ProductLine: emulatedsnp.ProductLine}
	if err := amd.FromKDSCertBytes(root.RootPEM()); err != nil {
		t.Fatal(err)
	}
	amd.ProductLine = emulatedsnp.ProductLine
	trusted := &verify.Options{DisableCertFetching: true, Now: time.Now(),
		TrustedRoots: map[string][]*trust.AMDRootCerts{emulatedsnp.ProductLine: {amd}}}

	t.Run("matching initdata", func(t *testing.T) {
		initdata := emulatedInitdata("launched")
		vm, rec, measurement := bootEmulatedSNP(t, root, initdata)
		c := connectAgent(t, vm)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := c.CreateSandbox(ctx, sandboxRequest(initdata)); err != nil {
			t.Fatalf("CreateSandbox with the launch initdata: %v", err)
		}
		answers := rec.answers()
		// The guest probes for a TDX platform first (PLATFORM, refused by
		// the SNP SP), then asks for its report.
		ok, found := firstOK(answers)
		if !found {
			t.Fatalf("the guest asked the SP nothing (answers %q)", answers)
		}
		f := strings.Split(ok, " ")
		if len(f) != 4 {
			t.Fatalf("SP answer has %d fields", len(f))
		}
		report, err1 := base64.StdEncoding.DecodeString(f[2])
		certs, err2 := base64.StdEncoding.DecodeString(f[3])
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		att, err := abi.ReportCertsToProto(append(report, certs...))
		if err != nil {
			t.Fatal(err)
		}
		if err := verify.SnpAttestation(att, trusted); err != nil {
			t.Fatalf("the guest's report does not verify against the emulated root: %v", err)
		}
		if err := verify.SnpAttestation(att, &verify.Options{DisableCertFetching: true, Now: time.Now()}); err == nil {
			t.Error("emulated report verified against AMD's roots")
		}
		r := att.GetReport()
		hd := sha256.Sum256(initdata)
		if !bytes.Equal(r.GetHostData(), hd[:]) || !bytes.Equal(r.GetMeasurement(), measurement) {
			t.Errorf("host_data %x measurement %x, want %x %x", r.GetHostData(), r.GetMeasurement(), hd, measurement)
		}
		if bytes.Equal(r.GetReportData(), make([]byte, 64)) {
			t.Error("the guest asked with all-zero report data; its check needs a fresh nonce")
		}
	})

	t.Run("initdata changed after launch", func(t *testing.T) {
		vm, rec, _ := bootEmulatedSNP(t, root, emulatedInitdata("launched"))
		c := connectAgent(t, vm)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, err := c.CreateSandbox(ctx, sandboxRequest(emulatedInitdata("swapped by the host")))
		if err == nil {
			t.Fatal("the agent accepted initdata whose digest is not HOST_DATA")
		}
		if reasonOf(err) != "INITDATA_MISMATCH" || !strings.Contains(err.Error(), "HOST_DATA") {
			t.Errorf("CreateSandbox = %v (reason %q), want INITDATA_MISMATCH naming HOST_DATA", err, reasonOf(err))
		}
		if a := rec.answers(); !hasOK(a) {
			t.Errorf("the refusal did not come from a report (SP answers %q)", a)
		}
	})
}

// firstOK is the first answer the SP accepted.
func firstOK(answers []string) (string, bool) {
	for _, a := range answers {
		if strings.HasPrefix(a, "OK ") {
			return a, true
		}
	}
	return "", false
}

func hasOK(answers []string) bool { _, ok := firstOK(answers); return ok }
