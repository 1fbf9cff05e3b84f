package tpm

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// Size limits on the untrusted evidence. A TPM 2.0 quote with an RSA-4096
// signature is under 1 KiB; a firmware event log of a VM is tens of KiB.
const (
	MaxEvidenceSize = 2 << 20
	MaxEventLogSize = 1 << 20
	maxEKCertSize   = 16 << 10
	maxStructSize   = 4 << 10
)

// PCRCount is the number of PCRs of the sha256 bank a quote must cover.
const PCRCount = 24

// Evidence is the "tpm" primary evidence (the wire format in kbstypes).
type Evidence = kbstypes.TPMEvidence

// Quote is a TPM2_Quote result.
type Quote = kbstypes.TPMQuote

// parsed is Evidence decoded into TPM structures; nothing in it is trusted.
type parsed struct {
	akDER      []byte
	akPub      any
	akTPM      *tpm2.TPMTPublic // nil when absent
	attestRaw  []byte
	attest     *tpm2.TPMSAttest
	quoteInfo  *tpm2.TPMSQuoteInfo
	sig        *tpm2.TPMTSignature
	pcrs       [PCRCount][]byte
	reportData []byte // nil when absent
	ekCert     *x509.Certificate
	eventLog   []byte
}

// parseEvidence decodes and bounds-checks the evidence JSON. It decides
// nothing about trust.
func parseEvidence(raw []byte) (*parsed, error) {
	if len(raw) > MaxEvidenceSize {
		return nil, fmt.Errorf("evidence is %d bytes, limit is %d", len(raw), MaxEvidenceSize)
	}
	var ev Evidence
	if err := json.Unmarshal(raw, &ev); err != nil {
		return nil, fmt.Errorf(`want {"ak_public":...,"tpm_quote":{"signature":...,"message":...,"pcrs":[...]}}: %w`, err)
	}
	p := &parsed{}
	var err error
	if p.akDER, err = decodeB64("ak_public", ev.AKPublic, maxStructSize); err != nil {
		return nil, err
	}
	if p.akPub, err = x509.ParsePKIXPublicKey(p.akDER); err != nil {
		return nil, fmt.Errorf("field \"ak_public\" is not a DER SubjectPublicKeyInfo: %w", err)
	}
	if ev.AKTPMPublic != "" {
		b, err := decodeB64("ak_tpm_public", ev.AKTPMPublic, maxStructSize)
		if err != nil {
			return nil, err
		}
		if p.akTPM, err = unmarshalExact[tpm2.TPMTPublic]("ak_tpm_public", b); err != nil {
			return nil, err
		}
	}
	if p.attestRaw, err = decodeB64("tpm_quote.message", ev.Quote.Message, maxStructSize); err != nil {
		return nil, err
	}
	if p.attest, err = unmarshalExact[tpm2.TPMSAttest]("tpm_quote.message", p.attestRaw); err != nil {
		return nil, err
	}
	if p.attest.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("field \"tpm_quote.message\" is a TPMS_ATTEST of type %#x, want a quote (%#x)", uint16(p.attest.Type), uint16(tpm2.TPMSTAttestQuote))
	}
	if p.quoteInfo, err = p.attest.Attested.Quote(); err != nil {
		return nil, fmt.Errorf("field \"tpm_quote.message\": %w", err)
	}
	sigRaw, err := decodeB64("tpm_quote.signature", ev.Quote.Signature, maxStructSize)
	if err != nil {
		return nil, err
	}
	if p.sig, err = unmarshalExact[tpm2.TPMTSignature]("tpm_quote.signature", sigRaw); err != nil {
		return nil, err
	}
	if len(ev.Quote.PCRs) != PCRCount {
		return nil, fmt.Errorf("field \"tpm_quote.pcrs\" has %d values, want the %d PCRs of the sha256 bank", len(ev.Quote.PCRs), PCRCount)
	}
	for i, s := range ev.Quote.PCRs {
		v, err := hex.DecodeString(s)
		if err != nil || len(v) != 32 {
			return nil, fmt.Errorf("field \"tpm_quote.pcrs\"[%d] is not 64 hex digits (a sha256 value)", i)
		}
		p.pcrs[i] = v
	}
	if ev.ReportData != "" {
		if p.reportData, err = decodeB64("report_data", ev.ReportData, kbstypes.ReportDataSize); err != nil {
			return nil, err
		}
	}
	if ev.EKCert != "" {
		if len(ev.EKCert) > maxEKCertSize {
			return nil, fmt.Errorf("field \"ek_cert\" is %d bytes, limit is %d", len(ev.EKCert), maxEKCertSize)
		}
		block, _ := pem.Decode([]byte(ev.EKCert))
		if block == nil || block.Type != "CERTIFICATE" {
			return nil, errors.New("field \"ek_cert\" is not a PEM CERTIFICATE")
		}
		if p.ekCert, err = x509.ParseCertificate(block.Bytes); err != nil {
			return nil, fmt.Errorf("field \"ek_cert\": %w", err)
		}
	}
	if ev.EventLog != "" {
		if p.eventLog, err = decodeB64("eventlog", ev.EventLog, MaxEventLogSize); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func decodeB64(field, s string, limit int) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("field %q is missing", field)
	}
	if base64.StdEncoding.DecodedLen(len(s)) > limit+2 {
		return nil, fmt.Errorf("field %q is over the limit of %d bytes", field, limit)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("field %q is not standard base64: %w", field, err)
	}
	if len(b) > limit {
		return nil, fmt.Errorf("field %q is %d bytes, limit is %d", field, len(b), limit)
	}
	return b, nil
}

// unmarshalExact decodes a TPM structure and refuses trailing bytes, so that
// what was signed is exactly what was parsed.
func unmarshalExact[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](field string, b []byte) (out *T, err error) {
	// go-tpm's reflection-based decoder is not written for hostile input;
	// a panic in it must not take the KBS down.
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("field %q: malformed TPM structure (%v)", field, r)
		}
	}()
	v, err := tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, fmt.Errorf("field %q: %w", field, err)
	}
	if re := tpm2.Marshal(*v); !bytes.Equal(re, b) {
		return nil, fmt.Errorf("field %q: %d trailing or non-canonical bytes after the TPM structure", field, len(b)-len(re))
	}
	return v, nil
}
