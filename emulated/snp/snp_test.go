package snp

import (
	"bufio"
	"bytes"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	emulatedroot "github.com/cloak-containers/cloak/emulated/root"
)

// testDir holds the one chain the tests share: RSA-4096 key generation
// takes seconds, so it happens once per run.
var (
	testDir  string
	testRoot *Root
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "emulatedsnp")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testDir = filepath.Join(dir, "chain")
	if testRoot, err = LoadOrCreate(testDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func trustedOptions(t *testing.T, root *Root) *verify.Options {
	t.Helper()
	r := &trust.AMDRootCerts{ProductLine: ProductLine}
	if err := r.FromKDSCertBytes(root.RootPEM()); err != nil {
		t.Fatalf("root PEM is not a KDS cert_chain: %v", err)
	}
	r.ProductLine = ProductLine
	return &verify.Options{
		DisableCertFetching: true,
		Now:                 time.Now(),
		TrustedRoots:        map[string][]*trust.AMDRootCerts{ProductLine: {r}},
	}
}

func attestation(t *testing.T, report, certs []byte) *spb.Attestation {
	t.Helper()
	att, err := abi.ReportCertsToProto(append(append([]byte{}, report...), certs...))
	if err != nil {
		t.Fatalf("report and cert table do not parse: %v", err)
	}
	return att
}

func testLaunch() Launch {
	var l Launch
	for i := range l.Measurement {
		l.Measurement[i] = byte(i)
	}
	hd, err := HostDataFor([]byte("version = \"0.1.0\"\n"))
	if err != nil {
		panic(err)
	}
	l.HostData = hd
	return l
}

func TestReportVerifiesAgainstGeneratedRoot(t *testing.T) {
	sp, err := New(testRoot, testLaunch())
	if err != nil {
		t.Fatal(err)
	}
	var rd [abi.ReportDataSize]byte
	copy(rd[:], "report data from the guest")
	raw, err := sp.Report(rd, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != abi.ReportSize {
		t.Fatalf("report is %d bytes, want %d", len(raw), abi.ReportSize)
	}
	att := attestation(t, raw, sp.CertTable())
	if err := verify.SnpAttestation(att, trustedOptions(t, testRoot)); err != nil {
		t.Fatalf("go-sev-guest verify: %v", err)
	}

	r := att.GetReport()
	want := testLaunch()
	chip := testRoot.ChipID()
	checks := []struct {
		name      string
		got, want []byte
	}{
		{"report_data", r.GetReportData(), rd[:]},
		{"measurement", r.GetMeasurement(), want.Measurement[:]},
		{"host_data", r.GetHostData(), want.HostData[:]},
		{"chip_id", r.GetChipId(), chip[:]},
	}
	for _, c := range checks {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s = %x, want %x", c.name, c.got, c.want)
		}
	}
	// A document without an algorithm is sha384 (CoCo's default), whose
	// first 32 bytes are HOST_DATA.
	sum := sha512.Sum384([]byte("version = \"0.1.0\"\n"))
	if !bytes.Equal(r.GetHostData(), sum[:32]) {
		t.Errorf("host_data is not the initdata's sha384 fitted to 32 bytes")
	}
	if r.GetVersion() != ReportVersion || r.GetPolicy() != GuestPolicy || r.GetVmpl() != 0 || r.GetPlatformInfo() != PlatformInfo {
		t.Errorf("fixed fields: version %d policy %#x vmpl %d platform %#x", r.GetVersion(), r.GetPolicy(), r.GetVmpl(), r.GetPlatformInfo())
	}
	if r.GetReportedTcb() != r.GetLaunchTcb() || r.GetReportedTcb() == 0 {
		t.Errorf("reported tcb %#x, launch tcb %#x", r.GetReportedTcb(), r.GetLaunchTcb())
	}

	// The signature covers the body: one flipped bit of report data fails.
	tampered := append([]byte{}, raw...)
	tampered[0x50] ^= 1
	if err := verify.SnpAttestation(attestation(t, tampered, sp.CertTable()), trustedOptions(t, testRoot)); err == nil {
		t.Error("tampered report verified")
	}
}

func TestReportRefusedByAMDRoots(t *testing.T) {
	sp, err := New(testRoot, testLaunch())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sp.Report([abi.ReportDataSize]byte{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Without the emulated root, go-sev-guest uses AMD's real Milan roots.
	err = verify.SnpAttestation(attestation(t, raw, sp.CertTable()), &verify.Options{DisableCertFetching: true, Now: time.Now()})
	if err == nil {
		t.Fatal("emulated report verified against AMD's roots")
	}
}

func TestReportRefusedByOtherEmulatedRoot(t *testing.T) {
	other, err := Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sp, err := New(testRoot, testLaunch())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sp.Report([abi.ReportDataSize]byte{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.SnpAttestation(attestation(t, raw, sp.CertTable()), trustedOptions(t, other)); err == nil {
		t.Fatal("report verified against another machine's emulated root")
	}
}

func TestLoadOrCreatePersists(t *testing.T) {
	again, err := LoadOrCreate(testDir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.VCEK.Equal(testRoot.VCEK) || !again.ARK.Equal(testRoot.ARK) {
		t.Error("second LoadOrCreate made a new chain instead of reading the stored one")
	}
	fi, err := os.Stat(filepath.Join(testDir, KeysFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", KeysFile, fi.Mode().Perm())
	}
	if fi, err := os.Stat(testDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("chain dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
}

func TestLoadRefusesDamagedChain(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{RootFile, VCEKFile, KeysFile} {
		b, err := os.ReadFile(filepath.Join(testDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Load(dir); err != nil {
		t.Fatalf("copy of a good chain: %v", err)
	}
	other, err := Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A VCEK certificate that does not match the stored key.
	if err := os.WriteFile(filepath.Join(dir, VCEKFile), emulatedroot.PEMCert(other.VCEK), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "delete the directory") {
		t.Errorf("mismatched VCEK: err = %v, want one saying to delete the directory", err)
	}
	if err := os.WriteFile(filepath.Join(dir, RootFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil {
		t.Error("garbage root file accepted")
	}
}

func TestServe(t *testing.T) {
	sp, err := New(testRoot, testLaunch())
	if err != nil {
		t.Fatal(err)
	}
	host, guest := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- sp.Serve(host) }()
	defer func() {
		guest.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	br := bufio.NewReader(guest)
	ask := func(line string) string {
		t.Helper()
		if _, err := guest.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		resp, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSuffix(resp, "\n")
	}

	rd := strings.Repeat("ab", abi.ReportDataSize)
	resp := ask("REPORT x1 2 " + rd + "\n")
	f := strings.Split(resp, " ")
	if len(f) != 4 || f[0] != "OK" || f[1] != "x1" {
		t.Fatalf("response %.80q, want OK x1 <report> <certs>", resp)
	}
	report, err := base64.StdEncoding.DecodeString(f[2])
	if err != nil || len(report) != abi.ReportSize {
		t.Fatalf("report: %d bytes, %v", len(report), err)
	}
	certs, err := base64.StdEncoding.DecodeString(f[3])
	if err != nil {
		t.Fatal(err)
	}
	att := attestation(t, report, certs)
	if err := verify.SnpAttestation(att, trustedOptions(t, testRoot)); err != nil {
		t.Fatalf("served report does not verify: %v", err)
	}
	if got := hex.EncodeToString(att.GetReport().GetReportData()); got != rd {
		t.Errorf("report_data %s, want %s", got, rd)
	}
	if att.GetReport().GetVmpl() != 2 {
		t.Errorf("vmpl %d, want 2", att.GetReport().GetVmpl())
	}

	bad := []struct{ line, want string }{
		{"REPORT x2 4 " + rd + "\n", "ERR x2 vmpl"},
		{"REPORT x3 0 " + rd[:126] + "\n", "ERR x3 report data"},
		{"REPORT x4 0 " + strings.Repeat("zz", abi.ReportDataSize) + "\n", "ERR x4 report data"},
		{"REPORT bad/id 0 " + rd + "\n", "ERR - request id"},
		{"HELLO\n", "ERR - want"},
		{strings.Repeat("A", 3*MaxRequestLine) + "\n", "ERR - request longer"},
	}
	for _, b := range bad {
		if got := ask(b.line); !strings.HasPrefix(got, b.want) {
			t.Errorf("%.40q -> %q, want prefix %q", b.line, got, b.want)
		}
	}
	// The stream is still in step after the errors.
	if got := ask("REPORT x5 0 " + rd + "\n"); !strings.HasPrefix(got, "OK x5 ") {
		t.Errorf("request after errors -> %.40q", got)
	}
}
