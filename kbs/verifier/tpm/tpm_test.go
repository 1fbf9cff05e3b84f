package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/verifier"
)

// A fake TPM for unit tests: a software AK signs TPMS_ATTEST structures the
// way a TPM does, and a test CA issues an EK certificate shaped like a real
// one (empty subject, critical SAN with only a directoryName). Real TPM
// evidence (swtpm) is verified in ci/integration/tpm_test.go.

var (
	keysOnce sync.Once
	akKey    *rsa.PrivateKey
	otherKey *rsa.PrivateKey
)

func keys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if akKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if otherKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
}

type fixture struct {
	ak         *rsa.PrivateKey
	reportData []byte // what the KBS expects: a 48-byte runtime-data digest
	extraData  []byte // what the quote carries: reportData's first 32 bytes
	pcrs       [PCRCount][]byte
	selection  []byte
	template   *tpm2.TPMTPublic
	ekCert     []byte
	eventLog   []byte
	mutate     func(*Evidence)
}

func newFixture(t testing.TB) *fixture {
	keys(t)
	f := &fixture{ak: akKey, reportData: make([]byte, 48), selection: []byte{0xff, 0xff, 0xff}}
	copy(f.reportData, "binding")
	f.reportData[47] = 0x48
	f.extraData = f.reportData[:32]
	for i := range f.pcrs {
		f.pcrs[i] = make([]byte, 32)
		f.pcrs[i][0] = byte(i)
	}
	tmpl := akTemplate(&akKey.PublicKey)
	f.template = &tmpl
	return f
}

func akTemplate(pub *rsa.PublicKey) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
			Restricted: true, SignEncrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Scheme: tpm2.TPMTRSAScheme{
				Scheme:  tpm2.TPMAlgRSASSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			KeyBits: 2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: pub.N.Bytes()}),
	}
}

func (f *fixture) evidence(t testing.TB) []byte {
	t.Helper()
	h := sha256.New()
	for _, v := range f.pcrs {
		h.Write(v)
	}
	attest := tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: []byte{0, 0xb, 1, 2}},
		ExtraData:       tpm2.TPM2BData{Buffer: f.extraData},
		ClockInfo:       tpm2.TPMSClockInfo{Clock: 1234, ResetCount: 1, Safe: true},
		FirmwareVersion: 0x20191023,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: f.selection}}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)},
		}),
	}
	msg := tpm2.Marshal(attest)
	d := sha256.Sum256(msg)
	sig, err := rsa.SignPKCS1v15(rand.Reader, f.ak, crypto.SHA256, d[:])
	if err != nil {
		t.Fatal(err)
	}
	tsig := tpm2.TPMTSignature{
		SigAlg:    tpm2.TPMAlgRSASSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: sig}}),
	}
	der, err := x509.MarshalPKIXPublicKey(&f.ak.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ev := Evidence{
		AKPublic:   base64.StdEncoding.EncodeToString(der),
		ReportData: base64.StdEncoding.EncodeToString(f.extraData),
		Quote: Quote{
			Signature: base64.StdEncoding.EncodeToString(tpm2.Marshal(tsig)),
			Message:   base64.StdEncoding.EncodeToString(msg),
		},
	}
	for _, v := range f.pcrs {
		ev.Quote.PCRs = append(ev.Quote.PCRs, hex.EncodeToString(v))
	}
	if f.template != nil {
		ev.AKTPMPublic = base64.StdEncoding.EncodeToString(tpm2.Marshal(*f.template))
	}
	if f.ekCert != nil {
		ev.EKCert = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.ekCert}))
	}
	if f.eventLog != nil {
		ev.EventLog = base64.StdEncoding.EncodeToString(f.eventLog)
	}
	if f.mutate != nil {
		f.mutate(&ev)
	}
	out, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func digestOf(t testing.TB, k *rsa.PrivateKey) [32]byte {
	d, err := AKDigest(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// testCA is a root and an EK certificate it issued.
type testCA struct {
	root  *x509.Certificate
	pool  *x509.CertPool
	ekDER []byte
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	ekKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	// SAN with only a directoryName (TPM manufacturer), critical since
	// the subject is empty, as the TCG EK credential profile asks.
	dirName, err := asn1.Marshal(pkix.Name{CommonName: "id:00001014"}.ToRDNSequence())
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dirName}})
	if err != nil {
		t.Fatal(err)
	}
	ek := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:        x509.KeyUsageKeyEncipherment,
		ExtraExtensions: []pkix.Extension{{Id: oidSAN, Critical: true, Value: san}},
	}
	ekDER, err := x509.CreateCertificate(rand.Reader, ek, root, &ekKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &testCA{root: root, pool: pool, ekDER: ekDER}
}

func TestVerifyAccepts(t *testing.T) {
	f := newFixture(t)
	ca := newTestCA(t, "ek-root")
	f.ekCert = ca.ekDER
	v, err := New(Config{TrustedAKs: [][32]byte{digestOf(t, akKey)}, EKRoots: ca.pool})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := v.Verify(context.Background(), f.evidence(t), f.reportData, nil)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if claims["pcr05"] != hex.EncodeToString(f.pcrs[5]) || claims["report_data"] != hex.EncodeToString(f.extraData) ||
		claims["ak_template_checked"] != true || claims["ak_trust"] != "enrolled" {
		t.Errorf("claims = %v", claims)
	}
	if ek := claims["ek"].(map[string]any); ek["verified"] != true || ek["issuer"] != "CN=ek-root" {
		t.Errorf("ek claims = %v", ek)
	}
	// Claims go into Rego and JSON: only JSON-native types.
	if _, err := json.Marshal(claims); err != nil {
		t.Errorf("claims do not encode: %v", err)
	}
}

// TestVerifyReportDataAsTrustee pins the binding to Trustee's TPM verifier
// (deps/verifier/src/tpm/mod.rs verify_nonce: expected.resize(32, 0), then
// equality with the quote's extraData): the known-answer digest of kbstypes
// is quoted as its first 32 bytes; bytes past 32 are not bound; a shorter
// expected value is compared zero-padded.
func TestVerifyReportDataAsTrustee(t *testing.T) {
	const (
		katDigest = "8a6244441b1b1171b3a1d56a693d4ce116c1f9ca1ae558bc5f59d46dada54cf49e92a361ab2472c434652fed5887f16d"
		katTPM    = "8a6244441b1b1171b3a1d56a693d4ce116c1f9ca1ae558bc5f59d46dada54cf4"
	)
	digest, _ := hex.DecodeString(katDigest)
	quoted, _ := hex.DecodeString(katTPM)
	v, _ := New(Config{TrustedAKs: [][32]byte{digestOf(t, akKey)}})
	for name, tc := range map[string]struct{ expected, extra []byte }{
		"known answer":         {digest, quoted},
		"bytes past 32 differ": {append(bytes.Clone(quoted), bytes.Repeat([]byte{0xee}, 16)...), quoted},
		"short expected":       {[]byte("short"), append([]byte("short"), make([]byte, 27)...)},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			f.reportData, f.extraData = tc.expected, tc.extra
			claims, err := v.Verify(context.Background(), f.evidence(t), tc.expected, nil)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if claims["report_data"] != hex.EncodeToString(tc.extra) {
				t.Errorf("report_data claim = %v, want %x", claims["report_data"], tc.extra)
			}
		})
	}
	if _, err := v.Verify(context.Background(), newFixture(t).evidence(t), nil, nil); err == nil {
		t.Error("no expected report data: want error")
	}
}

func TestVerifyInitdata(t *testing.T) {
	f := newFixture(t)
	digest := sha256.Sum256([]byte("initdata"))
	want := InitdataPCRValue(digest[:])
	f.pcrs[InitdataPCR] = want[:]
	v, _ := New(Config{TrustedAKs: [][32]byte{digestOf(t, akKey)}})
	claims, err := v.Verify(context.Background(), f.evidence(t), f.reportData, digest[:])
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if claims["init_data"] != hex.EncodeToString(digest[:]) {
		t.Errorf("init_data = %v", claims["init_data"])
	}
	other := sha256.Sum256([]byte("other initdata"))
	if _, err := v.Verify(context.Background(), f.evidence(t), f.reportData, other[:]); err == nil || !strings.Contains(err.Error(), "did not bind this initdata") {
		t.Errorf("other initdata: err = %v", err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	keys(t)
	ca := newTestCA(t, "ek-root")
	wrongCA := newTestCA(t, "wrong-root")
	trusted := [][32]byte{digestOf(t, akKey)}
	tests := []struct {
		name  string
		setup func(*fixture)
		cfg   Config
		rd    []byte // expected report data; nil: the fixture's
		check string
		want  string
	}{
		{name: "wrong nonce", rd: append(make([]byte, 31), 1), check: verifier.CheckReportData, want: "report data mismatch"},
		{name: "extraData zero-padded to 64 bytes", setup: func(f *fixture) {
			f.extraData, _ = kbstypes.PadReportData(f.reportData)
			f.mutate = func(e *Evidence) { e.ReportData = "" }
		}, check: verifier.CheckReportData, want: "report data mismatch"},
		{name: "extraData of 48 bytes", setup: func(f *fixture) {
			f.extraData = f.reportData
			f.mutate = func(e *Evidence) { e.ReportData = "" }
		}, check: verifier.CheckReportData, want: "report data mismatch"},
		{name: "tampered quote", setup: func(f *fixture) {
			f.mutate = func(e *Evidence) {
				b, _ := base64.StdEncoding.DecodeString(e.Quote.Message)
				b[len(b)-1] ^= 1 // last byte of the PCR digest
				e.Quote.Message = base64.StdEncoding.EncodeToString(b)
			}
		}, want: "does not verify with the AK"},
		{name: "tampered signature", setup: func(f *fixture) {
			f.mutate = func(e *Evidence) {
				b, _ := base64.StdEncoding.DecodeString(e.Quote.Signature)
				b[10] ^= 0x80
				e.Quote.Signature = base64.StdEncoding.EncodeToString(b)
			}
		}, want: "does not verify with the AK"},
		{name: "PCR value altered", setup: func(f *fixture) {
			f.mutate = func(e *Evidence) { e.Quote.PCRs[3] = strings.Repeat("00", 32) }
		}, want: "PCR values sent hash to"},
		{name: "partial PCR selection", setup: func(f *fixture) { f.selection = []byte{0xff, 0xff, 0} }, want: "want the sha256 bank's PCRs 0-23"},
		{name: "not a quote", setup: func(f *fixture) {
			f.mutate = func(e *Evidence) {
				b, _ := base64.StdEncoding.DecodeString(e.Quote.Message)
				b[5] = byte(tpm2.TPMSTAttestCertify & 0xff) // low byte of TPMS_ATTEST.type, after the 4-byte magic
				e.Quote.Message = base64.StdEncoding.EncodeToString(b)
			}
		}, check: verifier.CheckEvidence, want: "quote"},
		{name: "unknown AK", cfg: Config{TrustedAKs: [][32]byte{digestOf(t, otherKey)}}, want: "is not enrolled"},
		{name: "signed by another key", setup: func(f *fixture) {
			f.ak = otherKey
			f.mutate = func(e *Evidence) {
				der, _ := x509.MarshalPKIXPublicKey(&akKey.PublicKey)
				e.AKPublic = base64.StdEncoding.EncodeToString(der)
			}
		}, want: "does not verify with the AK"},
		{name: "EK from a wrong CA", setup: func(f *fixture) { f.ekCert = wrongCA.ekDER },
			cfg: Config{TrustedAKs: trusted, EKRoots: ca.pool}, want: "does not chain to the configured EK roots"},
		{name: "EK certificate missing", cfg: Config{TrustedAKs: trusted, EKRoots: ca.pool}, want: "has no EK certificate"},
		{name: "AK template of another key", setup: func(f *fixture) {
			tmpl := akTemplate(&otherKey.PublicKey)
			f.template = &tmpl
		}, want: "describes another key"},
		{name: "unrestricted AK", setup: func(f *fixture) { f.template.ObjectAttributes.Restricted = false }, want: "lack restricted"},
		{name: "report_data field differs", setup: func(f *fixture) {
			f.mutate = func(e *Evidence) { e.ReportData = base64.StdEncoding.EncodeToString(make([]byte, 32)) }
		}, want: `field "report_data"`},
		{name: "event log that does not replay", setup: func(f *fixture) { f.eventLog = testEventLog(t, []byte("other")) }, want: "event log does not describe"},
		{name: "garbage event log", setup: func(f *fixture) { f.eventLog = []byte("not a log") }, want: "event log"},
		{name: "trailing bytes after TPMS_ATTEST", setup: func(f *fixture) {
			f.mutate = func(e *Evidence) {
				b, _ := base64.StdEncoding.DecodeString(e.Quote.Message)
				e.Quote.Message = base64.StdEncoding.EncodeToString(append(b, 0))
			}
		}, check: verifier.CheckEvidence, want: "trailing"},
		{name: "23 PCRs", setup: func(f *fixture) {
			f.mutate = func(e *Evidence) { e.Quote.PCRs = e.Quote.PCRs[:23] }
		}, check: verifier.CheckEvidence, want: "has 23 values"},
		{name: "AK not a public key", setup: func(f *fixture) {
			f.mutate = func(e *Evidence) { e.AKPublic = base64.StdEncoding.EncodeToString([]byte("junk")) }
		}, check: verifier.CheckEvidence, want: "not a DER SubjectPublicKeyInfo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if tt.setup != nil {
				tt.setup(f)
			}
			cfg := tt.cfg
			if cfg.TrustedAKs == nil {
				cfg.TrustedAKs = trusted
			}
			v, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rd := tt.rd
			if rd == nil {
				rd = f.reportData
			}
			_, err = v.Verify(context.Background(), f.evidence(t), rd, nil)
			var ce *verifier.CheckError
			if err == nil || !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a CheckError", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
			if tt.check != "" && ce.Check != tt.check {
				t.Errorf("check = %q, want %q", ce.Check, tt.check)
			}
		})
	}
}

func TestEventLogReplay(t *testing.T) {
	f := newFixture(t)
	f.eventLog = testEventLog(t, []byte("firmware"))
	// PCR 0 after one extend from zero; PCRs 1-7 untouched (zero).
	d := sha256.Sum256([]byte("firmware"))
	var zero [32]byte
	pcr0 := sha256.Sum256(append(zero[:], d[:]...))
	f.pcrs[0] = pcr0[:]
	for i := 1; i < FirmwarePCRs; i++ {
		f.pcrs[i] = make([]byte, 32)
	}
	v, _ := New(Config{TrustedAKs: [][32]byte{digestOf(t, akKey)}})
	claims, err := v.Verify(context.Background(), f.evidence(t), f.reportData, nil)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	el := claims["eventlog"].(map[string]any)
	if el["events"] != int64(1) {
		t.Errorf("eventlog claims = %v", el)
	}
}

// testEventLog is a crypto-agile TCG log with a Spec ID event and one
// EV_POST_CODE event in PCR 0 whose sha256 digest is that of data.
func testEventLog(t testing.TB, data []byte) []byte {
	t.Helper()
	le := func(b []byte, v ...any) []byte {
		for _, x := range v {
			switch x := x.(type) {
			case uint32:
				b = append(b, byte(x), byte(x>>8), byte(x>>16), byte(x>>24))
			case uint16:
				b = append(b, byte(x), byte(x>>8))
			case uint8:
				b = append(b, x)
			case []byte:
				b = append(b, x...)
			}
		}
		return b
	}
	spec := le(nil, []byte("Spec ID Event03\x00"), uint32(0), uint8(0), uint8(2), uint8(0), uint8(2),
		uint32(1), uint16(0x000b), uint16(32), uint8(0))
	b := le(nil, uint32(0), uint32(3), make([]byte, 20), uint32(len(spec)), spec)
	d := sha256.Sum256(data)
	b = le(b, uint32(0), uint32(1), uint32(1), uint16(0x000b), d[:], uint32(len(data)), data)
	return b
}

func TestNewNeedsAKs(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "enrol") {
		t.Errorf("New without AKs: err = %v", err)
	}
}

func TestLoadTrustedAKs(t *testing.T) {
	keys(t)
	dir := t.TempDir()
	der, _ := x509.MarshalPKIXPublicKey(&akKey.PublicKey)
	writeTestFile(t, dir+"/ak.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	writeTestFile(t, dir+"/notes.txt", []byte("ignored"))
	got, err := LoadTrustedAKs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != digestOf(t, akKey) {
		t.Errorf("LoadTrustedAKs = %x", got)
	}
	writeTestFile(t, dir+"/bad.pub", []byte("not pem"))
	if _, err := LoadTrustedAKs(dir); err == nil || !strings.Contains(err.Error(), "bad.pub") {
		t.Errorf("bad key file: err = %v", err)
	}
	if _, err := LoadTrustedAKs(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no *.pub") {
		t.Errorf("empty dir: err = %v", err)
	}
}
