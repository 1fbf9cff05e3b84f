package snp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/testdata"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
)

// genuineTime is inside the validity of the genuine Milan VCEK that ships
// in go-sev-guest's testdata; fixed so the test does not age.
var genuineTime = time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)

func at(t time.Time) func() time.Time { return func() time.Time { return t } }

func genuineReportData() []byte {
	rd := make([]byte, 64)
	copy(rd, []byte{1, 2, 3, 4, 5})
	return rd
}

func mustEvidence(t testing.TB, report []byte, chain *spb.CertificateChain) json.RawMessage {
	t.Helper()
	ev, err := EvidenceJSON(report, chain)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func wantCheck(t *testing.T, err error, check, text string) {
	t.Helper()
	var ce *verifier.CheckError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want a CheckError", err)
	}
	if ce.Check != check || !strings.Contains(err.Error(), text) {
		t.Fatalf("err = [%s] %v; want [%s] containing %q", ce.Check, err, check, text)
	}
}

func TestGenuineMilanReport(t *testing.T) {
	v, err := New(Options{CRL: CRLSkip, Now: at(genuineTime)})
	if err != nil {
		t.Fatal(err)
	}
	ev := mustEvidence(t, testdata.AttestationBytes, &spb.CertificateChain{VcekCert: testdata.VcekBytes})
	claims, err := v.Verify(context.Background(), ev, genuineReportData(), nil)
	if err != nil {
		t.Fatalf("Verify genuine report: %v", err)
	}
	for k, want := range map[string]any{
		"measurement":  "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
		"vmpl":         0,
		"product_line": "Milan",
		"signing_key":  "vcek",
		"emulated":     false,
		"cert_source":  "evidence",
		"crl_checked":  false,
		"version":      2,
	} {
		if claims[k] != want {
			t.Errorf("claim %s = %v, want %v", k, claims[k], want)
		}
	}
	if p := claims["policy"].(map[string]any); p["debug"] != true || p["smt"] != true {
		t.Errorf("policy claims = %v (the genuine report allows debug and SMT)", p)
	}
	if tcb := claims["reported_tcb"].(map[string]any); tcb["microcode"] != 68 || tcb["snp"] != 5 || tcb["bootloader"] != 2 {
		t.Errorf("reported_tcb = %v", tcb)
	}
	// The same report as base64 string (Cloak's attester format).
	ev2, _ := json.Marshal(map[string]any{"attestation_report": testdata.AttestationBytes,
		"cert_chain": []map[string]any{{"cert_type": "VCEK", "data": testdata.VcekBytes}}})
	if _, err := v.Verify(context.Background(), ev2, genuineReportData(), nil); err != nil {
		t.Fatalf("Verify base64 form: %v", err)
	}
}

func TestGenuineFlippedBits(t *testing.T) {
	v, err := New(Options{CRL: CRLSkip, Now: at(genuineTime)})
	if err != nil {
		t.Fatal(err)
	}
	body := clone(testdata.AttestationBytes)
	body[0x90] ^= 1 // measurement
	sig := clone(testdata.AttestationBytes)
	sig[0x2a0] ^= 1 // signature R
	cert := clone(testdata.VcekBytes)
	cert[len(cert)-10] ^= 1 // inside the ASK's signature over the VCEK
	tests := []struct {
		name   string
		report []byte
		vcek   []byte
		want   string
	}{
		{"body", body, testdata.VcekBytes, "report signature does not verify"},
		{"signature", sig, testdata.VcekBytes, "report signature does not verify"},
		{"certificate", testdata.AttestationBytes, cert, "does not chain to a trusted AMD root"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), mustEvidence(t, tc.report, &spb.CertificateChain{VcekCert: tc.vcek}), genuineReportData(), nil)
			wantCheck(t, err, verifier.CheckEvidence, tc.want)
		})
	}
	t.Run("not yet valid", func(t *testing.T) {
		v, _ := New(Options{CRL: CRLSkip, Now: at(time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC))})
		_, err := v.Verify(context.Background(), mustEvidence(t, testdata.AttestationBytes, &spb.CertificateChain{VcekCert: testdata.VcekBytes}), genuineReportData(), nil)
		wantCheck(t, err, verifier.CheckEvidence, "validity period")
	})
}

func TestGenuineVCEKFromOfflineDir(t *testing.T) {
	r, _ := abi.ReportToProto(testdata.AttestationBytes)
	url := kds.VCEKCertURL("Milan", r.GetChipId(), kds.TCBVersion(r.GetReportedTcb()))
	dir := t.TempDir()
	f := collateral.New(collateral.Options{Dir: dir, Offline: true})
	v, _ := New(Options{Fetcher: f, CRL: CRLSkip, Now: at(genuineTime)})
	ev := mustEvidence(t, testdata.AttestationBytes, nil)
	_, err := v.Verify(context.Background(), ev, genuineReportData(), nil)
	p, _ := collateral.OfflinePath(dir, url)
	wantCheck(t, err, verifier.CheckEvidence, p)
	wantCheck(t, err, verifier.CheckEvidence, "could not be fetched from AMD KDS")

	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, testdata.VcekBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	claims, err := v.Verify(context.Background(), ev, genuineReportData(), nil)
	if err != nil {
		t.Fatalf("Verify with offline VCEK: %v", err)
	}
	if claims["cert_source"] != "kds" {
		t.Fatalf("cert_source = %v", claims["cert_source"])
	}
	// Without a fetcher the missing VCEK is a clear error.
	v2, _ := New(Options{CRL: CRLSkip, Now: at(genuineTime)})
	_, err = v2.Verify(context.Background(), ev, genuineReportData(), nil)
	wantCheck(t, err, verifier.CheckEvidence, "missing")
}

// TestChainErrClassification pins how chainErr reads go-sev-guest's errors:
// the exported types by type, whatever their text (a classification by
// message would send the first case to the generic "invalid"), and the
// untyped ones by the words go-sev-guest v0.15.0 uses (TestGenuineFlippedBits
// produces those from real verification).
func TestChainErrClassification(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"fetch failed", fmt.Errorf("verify: %w", &trust.AttestationRecreationErr{Msg: "offline"}), "could not be fetched from AMD KDS"},
		{"no VLEK", fmt.Errorf("verify: %w", verify.ErrMissingVlek), "chain is incomplete (cert source: evidence)"},
		{"signature", errors.New("report signature verification error: crypto/ecdsa: verification error"), "report signature does not verify"},
		{"chain", errors.New("VCEK could not be verified by any trusted roots. Last error: x509"), "does not chain to a trusted AMD root"},
		{"missing certificate", errors.New("missing VCEK certificate"), "chain is incomplete"},
		{"other", errors.New("unknown SignatureAlgo: 7"), "snp report or certificate chain is invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := chainErr(tc.err, "evidence")
			wantCheck(t, err, verifier.CheckEvidence, tc.want)
			if !errors.Is(err, tc.err) {
				t.Errorf("chainErr(%v) = %v, does not wrap the library's error", tc.err, err)
			}
		})
	}
}

// fakeChain is a test-only ARK/ASK/VCEK made with go-sev-guest's helpers.
type fakeChain struct {
	signer  *sevtest.AmdSigner
	created time.Time
}

func newFakeChain(t *testing.T) *fakeChain {
	t.Helper()
	created := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := sevtest.DefaultTestOnlyCertChain("Milan-B0", created)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeChain{signer: s, created: created}
}

func (c *fakeChain) rootPEM() []byte {
	var b bytes.Buffer
	pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.signer.Ask.Raw})
	pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.signer.Ark.Raw})
	return b.Bytes()
}

type reportOpts struct {
	reportData, hostData []byte
	vmpl                 uint32
	reportedTCB          uint64
	policy               abi.SnpPolicy
}

func (c *fakeChain) report(t *testing.T, o reportOpts) []byte {
	t.Helper()
	r := make([]byte, abi.ReportSize)
	binary.LittleEndian.PutUint32(r[0x00:], 2)
	binary.LittleEndian.PutUint64(r[0x08:], abi.SnpPolicyToBytes(o.policy))
	binary.LittleEndian.PutUint32(r[0x30:], o.vmpl)
	binary.LittleEndian.PutUint32(r[0x34:], 1) // ECDSA P-384 SHA-384
	copy(r[0x50:0x90], o.reportData)
	copy(r[0x90:0xc0], bytes.Repeat([]byte{0x11}, 48))
	copy(r[0xc0:0xe0], o.hostData)
	binary.LittleEndian.PutUint64(r[0x180:], o.reportedTCB)
	R, S, err := c.signer.Sign(abi.SignedComponent(r))
	if err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(R, S, r); err != nil {
		t.Fatal(err)
	}
	return r
}

func (c *fakeChain) verifier(t *testing.T, o Options) *Verifier {
	t.Helper()
	root, err := ParseRoot(c.rootPEM())
	if err != nil {
		t.Fatal(err)
	}
	o.ExtraRoots = append(o.ExtraRoots, root)
	if o.Now == nil {
		o.Now = at(c.created.Add(24 * time.Hour))
	}
	v, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (c *fakeChain) crl(t *testing.T, revoked ...*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{
		Number:             big.NewInt(1),
		ThisUpdate:         c.created,
		NextUpdate:         c.created.Add(30 * 24 * time.Hour),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}
	for _, sn := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: sn, RevocationTime: c.created})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, c.signer.Ark, c.signer.Keys.Ark)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func writeOffline(t *testing.T, dir, url string, b []byte) {
	t.Helper()
	p, err := collateral.OfflinePath(dir, url)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFakeChain(t *testing.T) {
	c := newFakeChain(t)
	rd := bytes.Repeat([]byte{0xab}, 64)
	digest := bytes.Repeat([]byte{0xcd}, 32)
	good := reportOpts{reportData: rd, hostData: digest}
	chain := &spb.CertificateChain{VcekCert: c.signer.Vcek.Raw}
	ctx := context.Background()

	t.Run("emulated root trusted", func(t *testing.T) {
		claims, err := c.verifier(t, Options{CRL: CRLSkip}).Verify(ctx, mustEvidence(t, c.report(t, good), chain), rd, digest)
		if err != nil {
			t.Fatal(err)
		}
		if claims["emulated"] != true || claims["host_data_checked"] != true || claims["host_data"] != strings.Repeat("cd", 32) {
			t.Fatalf("claims = %v", claims)
		}
	})
	t.Run("wrong root", func(t *testing.T) {
		v, _ := New(Options{CRL: CRLSkip, Now: at(c.created.Add(time.Hour))})
		_, err := v.Verify(ctx, mustEvidence(t, c.report(t, good), chain), rd, digest)
		wantCheck(t, err, verifier.CheckEvidence, "does not chain to a trusted AMD root")
	})
	t.Run("expired vcek", func(t *testing.T) {
		v := c.verifier(t, Options{CRL: CRLSkip, Now: at(c.created.AddDate(8, 0, 0))})
		_, err := v.Verify(ctx, mustEvidence(t, c.report(t, good), chain), rd, digest)
		wantCheck(t, err, verifier.CheckEvidence, "validity period")
	})
	t.Run("wrong report data", func(t *testing.T) {
		_, err := c.verifier(t, Options{CRL: CRLSkip}).Verify(ctx, mustEvidence(t, c.report(t, good), chain), bytes.Repeat([]byte{1}, 64), digest)
		wantCheck(t, err, verifier.CheckReportData, "report data mismatch")
	})
	t.Run("wrong host data", func(t *testing.T) {
		_, err := c.verifier(t, Options{CRL: CRLSkip}).Verify(ctx, mustEvidence(t, c.report(t, good), chain), rd, bytes.Repeat([]byte{2}, 32))
		wantCheck(t, err, verifier.CheckEvidence, "HOST_DATA")
	})
	t.Run("sha384 init-data digest is truncated", func(t *testing.T) {
		long := append(clone(digest), bytes.Repeat([]byte{9}, 16)...)
		if _, err := c.verifier(t, Options{CRL: CRLSkip}).Verify(ctx, mustEvidence(t, c.report(t, good), chain), rd, long); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("vmpl 1", func(t *testing.T) {
		o := good
		o.vmpl = 1
		_, err := c.verifier(t, Options{CRL: CRLSkip}).Verify(ctx, mustEvidence(t, c.report(t, o), chain), rd, digest)
		wantCheck(t, err, verifier.CheckEvidence, "VMPL 1")
	})
	t.Run("reported tcb differs from vcek", func(t *testing.T) {
		o := good
		o.reportedTCB = 0x4405000000000002
		_, err := c.verifier(t, Options{CRL: CRLSkip}).Verify(ctx, mustEvidence(t, c.report(t, o), chain), rd, digest)
		wantCheck(t, err, verifier.CheckEvidence, "inconsistent")
	})
	t.Run("debug is a claim", func(t *testing.T) {
		o := good
		o.policy = abi.SnpPolicy{Debug: true}
		claims, err := c.verifier(t, Options{CRL: CRLSkip}).Verify(ctx, mustEvidence(t, c.report(t, o), chain), rd, digest)
		if err != nil {
			t.Fatal(err)
		}
		if claims["policy"].(map[string]any)["debug"] != true {
			t.Fatalf("debug claim missing: %v", claims["policy"])
		}
	})
	crlURL := c.signer.Ask.CRLDistributionPoints[0]
	t.Run("crl required but missing", func(t *testing.T) {
		dir := t.TempDir()
		v := c.verifier(t, Options{CRL: CRLRequire, Fetcher: collateral.New(collateral.Options{Dir: dir, Offline: true})})
		_, err := v.Verify(ctx, mustEvidence(t, c.report(t, good), chain), rd, digest)
		wantCheck(t, err, verifier.CheckEvidence, "CRL")
		// If-available mode accepts and says it did not check.
		v = c.verifier(t, Options{CRL: CRLIfAvailable, Fetcher: collateral.New(collateral.Options{Dir: dir, Offline: true})})
		claims, err := v.Verify(ctx, mustEvidence(t, c.report(t, good), chain), rd, digest)
		if err != nil || claims["crl_checked"] != false {
			t.Fatalf("if-available: %v, %v", claims["crl_checked"], err)
		}
	})
	t.Run("crl clean", func(t *testing.T) {
		dir := t.TempDir()
		writeOffline(t, dir, crlURL, c.crl(t))
		v := c.verifier(t, Options{CRL: CRLRequire, Fetcher: collateral.New(collateral.Options{Dir: dir, Offline: true})})
		claims, err := v.Verify(ctx, mustEvidence(t, c.report(t, good), chain), rd, digest)
		if err != nil || claims["crl_checked"] != true {
			t.Fatalf("crl_checked=%v err=%v", claims["crl_checked"], err)
		}
	})
	for name, sn := range map[string]*big.Int{"vcek": c.signer.Vcek.SerialNumber, "ask": c.signer.Ask.SerialNumber} {
		t.Run("revoked "+name, func(t *testing.T) {
			dir := t.TempDir()
			writeOffline(t, dir, crlURL, c.crl(t, sn))
			v := c.verifier(t, Options{CRL: CRLRequire, Fetcher: collateral.New(collateral.Options{Dir: dir, Offline: true})})
			_, err := v.Verify(ctx, mustEvidence(t, c.report(t, good), chain), rd, digest)
			wantCheck(t, err, verifier.CheckEvidence, "revoked")
		})
	}
}

func TestParseEvidenceErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{`nope`, "want {"},
		{`{}`, `"attestation_report" is missing`},
		{`{"attestation_report":"AAAA"}`, "is 3 bytes, want 1184"},
		{`{"attestation_report":{"version":2}}`, `member "policy" is missing`},
		{`{"attestation_report":"` + strings.Repeat("00", 1184) + `","cert_chain":[{"cert_type":"XYZ","data":[]}]}`, "unknown cert_type"},
		{`{"attestation_report":"` + strings.Repeat("00", 1184) + `","cert_chain":[{"cert_type":{"OTHER":""},"data":[]}]}`, "neither a name"},
		{`{"attestation_report":"` + strings.Repeat("0", MaxEvidenceSize) + `"}`, "limit is"},
	}
	for _, tc := range tests {
		_, _, err := ParseEvidence([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseEvidence(%.60s) = %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestEvidenceJSONRoundTrip(t *testing.T) {
	ev := mustEvidence(t, testdata.AttestationBytes, &spb.CertificateChain{VcekCert: testdata.VcekBytes, AskCert: []byte{1}})
	raw, chain, err := ParseEvidence(ev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, testdata.AttestationBytes) || !bytes.Equal(chain.VcekCert, testdata.VcekBytes) || !bytes.Equal(chain.AskCert, []byte{1}) {
		t.Fatal("round trip changed the report or chain")
	}
}

func TestParseRawWithCertTable(t *testing.T) {
	c := newFakeChain(t)
	table, err := c.signer.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	rep := c.report(t, reportOpts{reportData: make([]byte, 64)})
	raw, chain, err := ParseRaw(append(clone(rep), table...))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, rep) || !bytes.Equal(chain.VcekCert, c.signer.Vcek.Raw) || !bytes.Equal(chain.ArkCert, c.signer.Ark.Raw) {
		t.Fatal("ParseRaw lost the report or certificates")
	}
	if _, _, err := ParseRaw(rep[:100]); err == nil {
		t.Fatal("short report accepted")
	}
	if _, _, err := ParseRaw(append(clone(rep), 1, 2, 3)); err == nil {
		t.Fatal("garbage after the report accepted")
	}
}

func TestParseRootErrors(t *testing.T) {
	if _, err := ParseRoot([]byte("not pem")); err == nil {
		t.Fatal("garbage accepted as a root")
	}
	c := newFakeChain(t)
	r, err := ParseRoot(c.rootPEM())
	if err != nil || r.GetProductLine() != "Milan" {
		t.Fatalf("ParseRoot = %v, %v", r, err)
	}
	if _, err := New(Options{ExtraRoots: []*trust.AMDRootCerts{trust.AMDRootCertsProduct("Venice")}}); err == nil {
		t.Fatal("root for an unknown product line accepted")
	}
}

func FuzzParseEvidence(f *testing.F) {
	ev, _ := EvidenceJSON(testdata.AttestationBytes, &spb.CertificateChain{VcekCert: testdata.VcekBytes})
	f.Add(ev)
	f.Add([]byte(`{"attestation_report":"` + strings.Repeat("00", 1184) + `"}`))
	f.Add([]byte(`{"attestation_report":{"version":2,"policy":1,"report_data":[],"measurement":[],"reported_tcb":{},"chip_id":[],"signature":{}}}`))
	v, _ := New(Options{CRL: CRLSkip, Now: at(genuineTime)})
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, chain, err := ParseEvidence(b)
		if err != nil {
			return
		}
		if len(raw) != abi.ReportSize {
			t.Fatalf("report of %d bytes", len(raw))
		}
		v.VerifyReport(context.Background(), raw, chain, nil, nil)
	})
}

func FuzzParseRaw(f *testing.F) {
	f.Add(testdata.AttestationBytes)
	f.Add(append(clone(testdata.AttestationBytes), make([]byte, 48)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, _, err := ParseRaw(b)
		if err == nil && len(raw) != abi.ReportSize {
			t.Fatalf("report of %d bytes", len(raw))
		}
	})
}
