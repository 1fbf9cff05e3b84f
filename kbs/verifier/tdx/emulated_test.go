package tdx

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	tdxtesting "github.com/google/go-tdx-guest/testing"
	"github.com/google/go-tdx-guest/testing/testdata"
	"google.golang.org/protobuf/proto"

	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
)

// fakePlatform is a test-only TDX platform: an SGX-style PCK chain under its
// own root, a TCB signing key, and collateral it signs, shaped like Intel's.
// Quotes are the genuine quote's fields re-signed with its keys.
type fakePlatform struct {
	rootKey, interKey, pckKey, tcbKey *ecdsa.PrivateKey
	root, inter, pck, tcbSigner       *x509.Certificate
	revokedPCK                        bool
}

const fakeRootCRL = "https://emulated-tdx.invalid/root.crl"

func newFakePlatform(t testing.TB) *fakePlatform {
	t.Helper()
	genuine, err := ParseQuote(testdata.RawQuote)
	if err != nil {
		t.Fatal(err)
	}
	genuineChain := pemCerts(genuine.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain())
	var sgxExt pkix.Extension
	for _, e := range genuineChain[0].Extensions {
		if e.Id.Equal(pcs.OidSgxExtension) {
			sgxExt = e
		}
	}
	p := &fakePlatform{}
	for _, k := range []**ecdsa.PrivateKey{&p.rootKey, &p.interKey, &p.pckKey, &p.tcbKey} {
		if *k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	name := func(cn string) pkix.Name {
		return pkix.Name{CommonName: cn, Organization: []string{"Cloak emulated-tdx (test only)"}}
	}
	serial := int64(1)
	mk := func(tmpl *x509.Certificate, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *x509.Certificate {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
		tmpl.NotAfter = time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)
		tmpl.BasicConstraintsValid = true
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	p.root = mk(&x509.Certificate{Subject: name("Intel SGX Root CA"), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, CRLDistributionPoints: []string{fakeRootCRL}}, p.rootKey, nil, nil)
	p.inter = mk(&x509.Certificate{Subject: name("Intel SGX PCK Platform CA"), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, p.interKey, p.root, p.rootKey)
	// Exactly the six extensions of Intel's PCK certificates, with the
	// genuine SGX extension so FMSPC and TCB components match the TCB info.
	p.pck = mk(&x509.Certificate{Subject: name("Intel SGX PCK Certificate"), SubjectKeyId: []byte{1, 2, 3, 4},
		KeyUsage: x509.KeyUsageDigitalSignature, CRLDistributionPoints: []string{"https://emulated-tdx.invalid/pck.crl"},
		ExtraExtensions: []pkix.Extension{sgxExt}}, p.pckKey, p.inter, p.interKey)
	p.tcbSigner = mk(&x509.Certificate{Subject: name("Intel SGX TCB Signing"), KeyUsage: x509.KeyUsageDigitalSignature},
		p.tcbKey, p.root, p.rootKey)
	return p
}

func rawSig(t testing.TB, key *ecdsa.PrivateKey, msg []byte) []byte {
	t.Helper()
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

func pemOf(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

// quote re-signs the genuine quote after edit changed its body or QE report.
func (p *fakePlatform) quote(t testing.TB, edit func(*pb.QuoteV4)) []byte {
	t.Helper()
	g, err := ParseQuote(testdata.RawQuote)
	if err != nil {
		t.Fatal(err)
	}
	q := proto.Clone(g).(*pb.QuoteV4)
	if edit != nil {
		edit(q)
	}
	attKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := make([]byte, 64)
	attKey.X.FillBytes(pub[:32])
	attKey.Y.FillBytes(pub[32:])
	sd := q.GetSignedData()
	sd.EcdsaAttestationKey = pub
	cd := sd.GetCertificationData()
	qrc := cd.GetQeReportCertificationData()
	h := sha256.Sum256(append(bytes.Clone(pub), qrc.GetQeAuthData().GetData()...))
	qrc.QeReport.ReportData = append(h[:], make([]byte, 32)...)
	qeRaw, err := abi.EnclaveReportToAbiBytes(qrc.GetQeReport())
	if err != nil {
		t.Fatal(err)
	}
	qrc.QeReportSignature = rawSig(t, p.pckKey, qeRaw)
	chain := pemOf(p.pck, p.inter, p.root)
	qrc.PckCertificateChainData.PckCertChain = chain
	qrc.PckCertificateChainData.Size = uint32(len(chain))
	// QE report 384 + signature 64 + auth data (2 + n) + chain (6 + n).
	cd.Size = uint32(384 + 64 + 2 + len(qrc.GetQeAuthData().GetData()) + 6 + len(chain))
	q.SignedDataSize = 64 + 64 + 6 + cd.Size
	hdr, err := abi.HeaderToAbiBytes(q.GetHeader())
	if err != nil {
		t.Fatal(err)
	}
	body, err := abi.TdQuoteBodyToAbiBytes(q.GetTdQuoteBody())
	if err != nil {
		t.Fatal(err)
	}
	sd.Signature = rawSig(t, attKey, append(hdr, body...))
	raw, err := abi.QuoteToAbiBytes(q)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// signed wraps a re-signed collateral document the way Intel's PCS does.
func (p *fakePlatform) signed(t testing.TB, field string, doc []byte) []byte {
	t.Helper()
	out, err := json.Marshal(map[string]any{field: json.RawMessage(doc), "signature": hex.EncodeToString(rawSig(t, p.tcbKey, doc))})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// collateral returns the platform's PCS responses. editTCB and editQE may
// change the decoded TCB info and QE identity before they are signed.
func (p *fakePlatform) collateral(t testing.TB, editTCB func(map[string]any), editQE func(map[string]any)) map[string]tdxtesting.HTTPResponse {
	t.Helper()
	doc := func(body []byte, field string, edit func(map[string]any)) []byte {
		var outer map[string]json.RawMessage
		if err := json.Unmarshal(body, &outer); err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(outer[field], &m); err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(m)
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The genuine quote's TCB is older than every level Intel's TCB info
	// lists; the fake platform's TCB info lists it as UpToDate.
	tcb := doc(testdata.TcbInfoBody, "tcbInfo", func(m map[string]any) {
		for _, l := range m["tcbLevels"].([]any) {
			tc := l.(map[string]any)["tcb"].(map[string]any)
			for _, k := range []string{"sgxtcbcomponents", "tdxtcbcomponents"} {
				for _, c := range tc[k].([]any) {
					c.(map[string]any)["svn"] = 0
				}
			}
			tc["pcesvn"] = 0
		}
		if editTCB != nil {
			editTCB(m)
		}
	})
	qe := doc(testdata.QeIdentityBody, "enclaveIdentity", editQE)
	chainHeader := func(name string, c *x509.Certificate) map[string][]string {
		return map[string][]string{name: {url.QueryEscape(string(pemOf(c, p.root)))}}
	}
	now := time.Date(2023, 6, 1, 0, 0, 0, 0, time.UTC)
	crl := func(signer *x509.Certificate, key crypto.Signer, revoked []x509.RevocationListEntry) []byte {
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
			Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.AddDate(1, 0, 0), RevokedCertificateEntries: revoked,
		}, signer, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	var revoked []x509.RevocationListEntry
	if p.revokedPCK {
		revoked = append(revoked, x509.RevocationListEntry{SerialNumber: p.pck.SerialNumber, RevocationTime: now})
	}
	return map[string]tdxtesting.HTTPResponse{
		pcs.TcbInfoURL("50806f000000"): {Header: chainHeader("Tcb-Info-Issuer-Chain", p.tcbSigner), Body: p.signed(t, "tcbInfo", tcb)},
		pcs.QeIdentityURL():            {Header: chainHeader("Sgx-Enclave-Identity-Issuer-Chain", p.tcbSigner), Body: p.signed(t, "enclaveIdentity", qe)},
		pcs.PckCrlURL("platform"):      {Header: chainHeader("Sgx-Pck-Crl-Issuer-Chain", p.inter), Body: crl(p.inter, p.interKey, revoked)},
		fakeRootCRL:                    {Body: crl(p.root, p.rootKey, nil)},
	}
}

func (p *fakePlatform) verifier(t testing.TB, responses map[string]tdxtesting.HTTPResponse, trustRoot bool) *Verifier {
	t.Helper()
	dir := t.TempDir()
	writeOffline(t, dir, responses)
	o := Options{
		Collateral: collateral.New(collateral.Options{Dir: dir, Offline: true}),
		Now:        func() time.Time { return genuineTime },
	}
	if trustRoot {
		o.ExtraRoots = []*x509.Certificate{p.root}
	}
	v, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestEmulatedPlatform(t *testing.T) {
	p := newFakePlatform(t)
	rd := bytes.Repeat([]byte{0x5a}, 64)
	initdata := bytes.Repeat([]byte{0x17}, 48)
	bind := func(q *pb.QuoteV4) {
		q.TdQuoteBody.ReportData = bytes.Clone(rd)
		q.TdQuoteBody.MrConfigId = bytes.Clone(initdata)
	}
	good := p.quote(t, bind)
	v := p.verifier(t, p.collateral(t, nil, nil), true)

	claims, err := v.Verify(context.Background(), evidenceJSON(t, good, nil), rd, initdata)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	for name, want := range map[string]any{
		"emulated": true, "tcb_status": "UpToDate", "qe_tcb_status": "UpToDate", "debug": false,
		"mr_config_id": hexOf(initdata), "init_data": hexOf(initdata), "report_data": hexOf(rd),
	} {
		if claims[name] != want {
			t.Errorf("claim %s = %v, want %v", name, claims[name], want)
		}
	}

	// A 32-byte (sha256) initdata digest is compared zero-padded.
	short := p.quote(t, func(q *pb.QuoteV4) {
		bind(q)
		q.TdQuoteBody.MrConfigId = append(bytes.Repeat([]byte{0x17}, 32), make([]byte, 16)...)
	})
	if _, err := v.Verify(context.Background(), evidenceJSON(t, short, nil), rd, bytes.Repeat([]byte{0x17}, 32)); err != nil {
		t.Fatalf("Verify with sha256 initdata: %v", err)
	}

	debug := p.quote(t, func(q *pb.QuoteV4) {
		bind(q)
		q.TdQuoteBody.TdAttributes[0] |= 0x01
	})
	claims, err = v.Verify(context.Background(), evidenceJSON(t, debug, nil), rd, initdata)
	if err != nil {
		t.Fatalf("Verify debug TD: %v", err)
	}
	if claims["debug"] != true {
		t.Fatalf("debug TD: claim debug = %v, want true (the policy refuses it)", claims["debug"])
	}

	outdated := p.verifier(t, p.collateral(t, func(m map[string]any) {
		for _, l := range m["tcbLevels"].([]any) {
			l.(map[string]any)["tcbStatus"] = "OutOfDate"
		}
	}, nil), true)
	claims, err = outdated.Verify(context.Background(), evidenceJSON(t, good, nil), rd, initdata)
	if err != nil {
		t.Fatalf("Verify with OutOfDate TCB: %v", err)
	}
	if claims["tcb_status"] != "OutOfDate" {
		t.Fatalf("tcb_status = %v, want OutOfDate (reported for the policy to refuse)", claims["tcb_status"])
	}
}

func TestEmulatedPlatformRejected(t *testing.T) {
	p := newFakePlatform(t)
	rd := bytes.Repeat([]byte{0x5a}, 64)
	good := p.quote(t, func(q *pb.QuoteV4) { q.TdQuoteBody.ReportData = bytes.Clone(rd) })
	mixed := p.collateral(t, nil, nil)
	tcbURL := pcs.TcbInfoURL("50806f000000")
	mixed[tcbURL] = newFakePlatform(t).collateral(t, nil, nil)[tcbURL]
	revoked := newFakePlatform(t)
	revoked.revokedPCK = true
	tests := []struct {
		name  string
		v     *Verifier
		quote []byte
		text  string
	}{
		{"root not configured", p.verifier(t, p.collateral(t, nil, nil), false), good,
			"PCK certificate chain ends at root \"Intel SGX Root CA\" with key sha256:"},
		{"TCB info signed by another root", p.verifier(t, mixed, true), good,
			"tcbInfo response verification failed: unable to verify signing certificate: x509: certificate signed by unknown authority"},
		{"wrong QE identity (MRSIGNER)", p.verifier(t, p.collateral(t, nil, func(m map[string]any) {
			m["mrsigner"] = "00" + m["mrsigner"].(string)[2:]
		}), true), good, "MRSIGNER value(\"dc9e2a7c"},
		{"wrong QE identity with OutOfDate TCB", p.verifier(t, p.collateral(t, func(m map[string]any) {
			for _, l := range m["tcbLevels"].([]any) {
				l.(map[string]any)["tcbStatus"] = "OutOfDate"
			}
		}, func(m map[string]any) {
			m["mrsigner"] = "00" + m["mrsigner"].(string)[2:]
		}), true), good, "QE report MRSIGNER dc9e2a7c"},
		{"wrong QE identity (ISVPRODID)", p.verifier(t, p.collateral(t, nil, func(m map[string]any) {
			m["isvprodid"] = 7
		}), true), good, "ISV PRODID value(2) in QE Report is not equal to ISV PRODID value(7)"},
		{"QE report from another enclave", p.verifier(t, p.collateral(t, nil, nil), true),
			p.quote(t, func(q *pb.QuoteV4) {
				q.TdQuoteBody.ReportData = bytes.Clone(rd)
				q.SignedData.CertificationData.QeReportCertificationData.QeReport.MrSigner[0] ^= 0xff
			}), "MRSIGNER value(\"239e2a7c"},
		{"revoked PCK certificate", revoked.verifier(t, revoked.collateral(t, nil, nil), true),
			revoked.quote(t, func(q *pb.QuoteV4) { q.TdQuoteBody.ReportData = bytes.Clone(rd) }),
			"PCK Leaf certificate in PCK certificate chain was revoked"},
		{"expired TCB info", p.verifier(t, p.collateral(t, func(m map[string]any) {
			m["nextUpdate"] = "2023-06-30T00:00:00Z"
		}, nil), true), good, "TCB info for FMSPC 50806f000000 (https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806f000000) expired at 2023-06-30T00:00:00Z"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.v.Verify(context.Background(), evidenceJSON(t, tc.quote, nil), rd, nil)
			wantCheck(t, err, verifier.CheckEvidence, tc.text)
		})
	}
}
