// Package tpm provides TPM 2.0 evidence (TEE name "tpm"): a quote by an
// attestation key (AK) over the report data and the sha256 bank's PCRs 0-23,
// with the EK certificate from the TPM's NV and the firmware event log, in
// the JSON format of Trustee's TPM attester (see kbs/verifier/tpm for what
// the KBS checks).
//
// The AK is the TCG default RSA-2048 AK template created as a primary key of
// the endorsement hierarchy: the same TPM always derives the same AK from
// its endorsement seed, so an admin enrols it once, and the key never leaves
// the TPM.
package tpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// Defaults of the guest's TPM.
const (
	DefaultDevice   = "/dev/tpmrm0"
	DefaultEventLog = "/sys/kernel/security/tpm0/binary_bios_measurements"
	// EKCertIndex is the NV index of the RSA-2048 EK certificate (TCG EK
	// Credential Profile).
	EKCertIndex tpm2.TPMHandle = 0x01c00002
	// InitdataPCR is the PCR ExtendInitdata extends.
	InitdataPCR = 8
	pcrCount    = 24
	// maxEventLog bounds the event log read from securityfs.
	maxEventLog = 1 << 20
	// maxEKCert bounds the EK certificate NV area.
	maxEKCert = 8 << 10
	// nvChunk is what one TPM2_NV_Read asks for; every TPM takes 512.
	nvChunk = 512
)

// Evidence is the "tpm" evidence document (the wire format in kbstypes;
// field meanings there).
type Evidence = kbstypes.TPMEvidence

// Quote is a TPM2_Quote result.
type Quote = kbstypes.TPMQuote

// Provider produces "tpm" evidence.
type Provider struct {
	open         func() (transport.TPMCloser, error)
	eventLogPath string
}

// New returns a provider for the TPM device dev ("" = /dev/tpmrm0, the
// kernel's resource manager, so other TPM users cannot disturb the AK's
// transient handle). It fails when the device does not exist.
func New(dev string) (*Provider, error) {
	if dev == "" {
		dev = DefaultDevice
	}
	if _, err := os.Stat(dev); err != nil {
		return nil, fmt.Errorf("no TPM: %w (the VM needs a TPM device, e.g. swtpm with tpm-crb)", err)
	}
	return &Provider{
		open:         func() (transport.TPMCloser, error) { return linuxtpm.Open(dev) },
		eventLogPath: DefaultEventLog,
	}, nil
}

// NewTransport returns a provider talking to the TPM open returns (a
// socket TPM in tests), reading the event log at eventLogPath ("" = none).
func NewTransport(open func() (transport.TPMCloser, error), eventLogPath string) *Provider {
	return &Provider{open: open, eventLogPath: eventLogPath}
}

// Tee returns kbstypes.TeeTPM.
func (p *Provider) Tee() string { return kbstypes.TeeTPM }

// AKTemplate is the TCG default RSA-2048 AK: a restricted RSASSA-SHA256
// signing key that never leaves the TPM.
var AKTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgRSA,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
		Scheme: tpm2.TPMTRSAScheme{
			Scheme:  tpm2.TPMAlgRSASSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		KeyBits: 2048,
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
}

// ak is a loaded AK.
type ak struct {
	handle tpm2.AuthHandle
	public tpm2.TPMTPublic
	der    []byte
}

func loadAK(t transport.TPM) (*ak, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(AKTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create the AK in the endorsement hierarchy: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		flush(t, rsp.ObjectHandle)
		return nil, fmt.Errorf("AK public area: %w", err)
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		flush(t, rsp.ObjectHandle)
		return nil, fmt.Errorf("AK public key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		flush(t, rsp.ObjectHandle)
		return nil, fmt.Errorf("encode AK public key: %w", err)
	}
	return &ak{
		handle: tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)},
		public: *pub,
		der:    der,
	}, nil
}

func flush(t transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(t)
}

// AKPublic returns the DER SubjectPublicKeyInfo of this TPM's AK, the value
// an admin enrols in the KBS.
func (p *Provider) AKPublic(context.Context) ([]byte, error) {
	t, err := p.open()
	if err != nil {
		return nil, fmt.Errorf("open TPM: %w", err)
	}
	defer t.Close()
	k, err := loadAK(t)
	if err != nil {
		return nil, err
	}
	flush(t, k.handle.Handle)
	return k.der, nil
}

var allPCRs = tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
	Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0xff, 0xff, 0xff},
}}}

// Evidence quotes PCRs 0-23 of the sha256 bank with the first 32 bytes of
// reportData (kbstypes.TPMReportData) as qualifying data, as
// guest-components' TPM attester does.
func (p *Provider) Evidence(_ context.Context, reportData []byte) (json.RawMessage, error) {
	if len(reportData) > kbstypes.ReportDataSize {
		return nil, fmt.Errorf("tpm evidence: report data is %d bytes, at most %d fit", len(reportData), kbstypes.ReportDataSize)
	}
	reportData = kbstypes.TPMReportData(reportData)
	t, err := p.open()
	if err != nil {
		return nil, fmt.Errorf("open TPM: %w", err)
	}
	defer t.Close()
	k, err := loadAK(t)
	if err != nil {
		return nil, err
	}
	defer flush(t, k.handle.Handle)

	// A PCR extended between the quote and the read would make the values
	// disagree with the signed digest; quote again in that case.
	var quote *tpm2.QuoteResponse
	var pcrs [][]byte
	for attempt := 0; ; attempt++ {
		quote, err = tpm2.Quote{
			SignHandle:     k.handle,
			QualifyingData: tpm2.TPM2BData{Buffer: reportData},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      allPCRs,
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("TPM2_Quote: %w", err)
		}
		if pcrs, err = readPCRs(t); err != nil {
			return nil, err
		}
		ok, err := pcrsMatch(quote, pcrs)
		if err != nil {
			return nil, err
		}
		if ok {
			break
		}
		if attempt == 2 {
			return nil, errors.New("TPM2_Quote: PCRs kept changing while quoting; retry later")
		}
	}
	ev := Evidence{
		AKPublic: base64.StdEncoding.EncodeToString(k.der),
		Quote: Quote{
			Signature: base64.StdEncoding.EncodeToString(tpm2.Marshal(quote.Signature)),
			Message:   base64.StdEncoding.EncodeToString(quote.Quoted.Bytes()),
		},
		ReportData:  base64.StdEncoding.EncodeToString(reportData),
		AKTPMPublic: base64.StdEncoding.EncodeToString(tpm2.Marshal(k.public)),
	}
	for _, v := range pcrs {
		ev.Quote.PCRs = append(ev.Quote.PCRs, hex.EncodeToString(v))
	}
	if cert, err := readEKCert(t); err != nil {
		return nil, err
	} else if cert != nil {
		ev.EKCert = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert}))
	}
	if p.eventLogPath != "" {
		log, err := readBounded(p.eventLogPath, maxEventLog)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("read TPM event log: %w", err)
		}
		if len(log) > 0 {
			ev.EventLog = base64.StdEncoding.EncodeToString(log)
		}
	}
	out, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode tpm evidence: %w", err)
	}
	return out, nil
}

// pcrsMatch reports whether pcrs hash to the digest the quote signed.
func pcrsMatch(q *tpm2.QuoteResponse, pcrs [][]byte) (bool, error) {
	attest, err := q.Quoted.Contents()
	if err != nil {
		return false, fmt.Errorf("TPM2_Quote result: %w", err)
	}
	info, err := attest.Attested.Quote()
	if err != nil {
		return false, fmt.Errorf("TPM2_Quote result: %w", err)
	}
	h := sha256.New()
	for _, v := range pcrs {
		h.Write(v)
	}
	return bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer), nil
}

// readPCRs reads the sha256 bank's PCRs 0-23; TPM2_PCR_Read returns at most
// 8 digests per call.
func readPCRs(t transport.TPM) ([][]byte, error) {
	out := make([][]byte, 0, pcrCount)
	for group := range pcrCount / 8 {
		sel := []byte{0, 0, 0}
		sel[group] = 0xff
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
			Hash: tpm2.TPMAlgSHA256, PCRSelect: sel,
		}}}}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("TPM2_PCR_Read: %w", err)
		}
		if len(rsp.PCRValues.Digests) != 8 {
			return nil, fmt.Errorf("TPM2_PCR_Read returned %d of PCRs %d-%d: the TPM has no active sha256 bank", len(rsp.PCRValues.Digests), group*8, group*8+7)
		}
		for _, d := range rsp.PCRValues.Digests {
			out = append(out, d.Buffer)
		}
	}
	return out, nil
}

// readEKCert reads the RSA EK certificate from NV, nil when the TPM has
// none.
func readEKCert(t transport.TPM) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: EKCertIndex}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, nil
		}
		return nil, fmt.Errorf("read EK certificate NV index %#x: %w", uint32(EKCertIndex), err)
	}
	nv, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("EK certificate NV index: %w", err)
	}
	if nv.DataSize > maxEKCert {
		return nil, fmt.Errorf("EK certificate NV index holds %d bytes, limit is %d", nv.DataSize, maxEKCert)
	}
	var buf []byte
	for off := uint16(0); off < nv.DataSize; {
		n := min(nv.DataSize-off, nvChunk)
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: EKCertIndex, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: EKCertIndex, Name: pub.NVName},
			Size:       n,
			Offset:     off,
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("read EK certificate: %w", err)
		}
		buf = append(buf, rsp.Data.Buffer...)
		off += n
	}
	// The NV area may be larger than the DER certificate it holds.
	var der asn1.RawValue
	if _, err := asn1.Unmarshal(buf, &der); err == nil {
		buf = der.FullBytes
	}
	cert, err := x509.ParseCertificate(buf)
	if err != nil {
		return nil, fmt.Errorf("EK certificate in NV index %#x: %w", uint32(EKCertIndex), err)
	}
	return cert.Raw, nil
}

// ExtendInitdata extends PCR 8 with the initdata digest, the binding the
// KBS checks (kbs/verifier/tpm.InitdataPCRValue): a sha256 digest as it is,
// a longer one hashed with sha256 first. Call it once per boot, before the
// first attestation.
func (p *Provider) ExtendInitdata(_ context.Context, digest []byte) error {
	d := digest
	if len(d) != sha256.Size {
		s := sha256.Sum256(d)
		d = s[:]
	}
	t, err := p.open()
	if err != nil {
		return fmt.Errorf("open TPM: %w", err)
	}
	defer t.Close()
	h := tpm2.TPMHandle(InitdataPCR)
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: h, Name: tpm2.HandleName(h), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d}}},
	}).Execute(t); err != nil {
		return fmt.Errorf("extend PCR %d with the initdata digest: %w", InitdataPCR, err)
	}
	return nil
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is over %d bytes", path, limit)
	}
	return b, nil
}
