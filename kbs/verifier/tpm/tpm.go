// Package tpm verifies TPM 2.0 evidence (TEE name "tpm"): a quote signed by
// an attestation key (AK) over the KBS's report data and the sha256 PCR bank,
// in the JSON format of Trustee's TPM attester.
//
// Trust in the AK comes from a configured list of enrolled AKs (as in
// Trustee). The KBS protocol is one round trip, which leaves no room for
// TPM2_MakeCredential/ActivateCredential, so the EK certificate the evidence
// carries is checked against configured roots but does not by itself make an
// AK trusted: an AK is enrolled beforehand, by an admin who did a
// credential activation against the EK (NewCredentialChallenge) or who read
// the AK off a machine they control. docs/attestation.md says exactly what each check proves.
package tpm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/verifier"
)

// InitdataPCR is the PCR the guest extends with its initdata digest before
// attesting (as Trustee's TPM attester does).
const InitdataPCR = 8

// MaxTrustedAKs bounds the AK list read from a directory.
const MaxTrustedAKs = 1000

// Config says which AKs and EK certificate authorities the verifier trusts.
type Config struct {
	// TrustedAKs are SHA-256 digests of enrolled AKs' DER
	// SubjectPublicKeyInfo (AKDigest). Evidence from any other AK is
	// refused.
	TrustedAKs [][sha256.Size]byte
	// EKRoots, when set, makes an EK certificate mandatory: it must chain
	// to one of these roots through EKIntermediates.
	EKRoots         *x509.CertPool
	EKIntermediates *x509.CertPool
	// Now is the time EK certificates are checked at (nil: time.Now).
	Now func() time.Time
}

// Verifier verifies "tpm" evidence.
type Verifier struct {
	cfg Config
}

var _ verifier.Verifier = (*Verifier)(nil)

// New returns a verifier for cfg. It refuses a config that trusts no AK,
// since such a verifier could never accept anything.
func New(cfg Config) (*Verifier, error) {
	if len(cfg.TrustedAKs) == 0 {
		return nil, errors.New("tpm verifier: no trusted attestation keys: enrol at least one AK (its DER public key, PEM in a .pub file)")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{cfg: cfg}, nil
}

// AKDigest is the identifier of an AK in Config.TrustedAKs: SHA-256 of its
// DER SubjectPublicKeyInfo (the same as Trustee's trusted_ak_keys).
func AKDigest(pub crypto.PublicKey) ([sha256.Size]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("encode AK public key: %w", err)
	}
	return sha256.Sum256(der), nil
}

// LoadTrustedAKs reads every *.pub file of dir (PEM "PUBLIC KEY", as
// Trustee's trusted_ak_keys_dir), at most MaxTrustedAKs of them.
func LoadTrustedAKs(dir string) ([][sha256.Size]byte, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.pub"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("trusted AK directory %s has no *.pub file: put each enrolled AK there as a PEM public key", dir)
	}
	if len(paths) > MaxTrustedAKs {
		return nil, fmt.Errorf("trusted AK directory %s has %d keys, limit is %d", dir, len(paths), MaxTrustedAKs)
	}
	out := make([][sha256.Size]byte, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		block, _ := pem.Decode(b)
		if block == nil || block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("trusted AK %s: not a PEM PUBLIC KEY", p)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("trusted AK %s: %w", p, err)
		}
		d, err := AKDigest(pub)
		if err != nil {
			return nil, fmt.Errorf("trusted AK %s: %w", p, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Verify checks, in order: the evidence parses; the AK is enrolled; the
// AK's TPM template (when sent) is a restricted signing key matching it; the
// EK certificate chains to the configured roots; the quote is signed by the
// AK; its extraData is kbstypes.TPMReportData(expectedReportData), the
// digest cut to 32 bytes, as Trustee's TPM verifier compares it; its PCR
// digest matches the PCR values; PCR 8 carries the initdata digest; the event log (when sent)
// replays to the quoted PCRs. The claims are the PCRs (pcr00..pcr23) and
// what each check established.
func (v *Verifier) Verify(_ context.Context, evidence json.RawMessage, expectedReportData, initdataDigest []byte) (map[string]any, error) {
	if len(expectedReportData) == 0 {
		return nil, errors.New("tpm verifier: no expected report data")
	}
	expectedReportData = kbstypes.TPMReportData(expectedReportData)
	p, err := parseEvidence(evidence)
	if err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeTPM, err)
	}
	claims, err := v.verify(p, expectedReportData, initdataDigest)
	if err != nil {
		var ce *verifier.CheckError
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, &verifier.CheckError{Check: verifier.CheckEvidence, Detail: "tpm quote verification failed", Err: err}
	}
	return claims, nil
}

func (v *Verifier) verify(p *parsed, expectedReportData, initdataDigest []byte) (map[string]any, error) {
	akDigest := sha256.Sum256(p.akDER)
	if !slices.Contains(v.cfg.TrustedAKs, akDigest) {
		return nil, fmt.Errorf("attestation key sha256:%x is not enrolled: add its public key to the trusted AKs if this TPM is yours", akDigest)
	}
	claims := map[string]any{
		"ak_sha256": hex.EncodeToString(akDigest[:]),
		"ak_trust":  "enrolled",
	}
	if p.akTPM != nil {
		if err := checkAKTemplate(p.akTPM, p.akPub); err != nil {
			return nil, err
		}
	}
	claims["ak_template_checked"] = p.akTPM != nil

	ek, err := v.checkEK(p.ekCert)
	if err != nil {
		return nil, err
	}
	if ek != nil {
		claims["ek"] = ek
	}

	if err := checkSignature(p.akPub, p.sig, p.attestRaw); err != nil {
		return nil, err
	}
	if p.attest.Magic != tpm2.TPMGeneratedValue {
		return nil, fmt.Errorf("quote magic is %#x, not TPM_GENERATED_VALUE", uint32(p.attest.Magic))
	}
	extra := p.attest.ExtraData.Buffer
	if subtle.ConstantTimeCompare(extra, expectedReportData) != 1 {
		return nil, verifier.ReportDataMismatch(expectedReportData, extra)
	}
	if p.reportData != nil && subtle.ConstantTimeCompare(p.reportData, extra) != 1 {
		return nil, fmt.Errorf("field \"report_data\" (%x) differs from the quote's extraData (%x)", p.reportData, extra)
	}
	if err := checkPCRDigest(p); err != nil {
		return nil, err
	}
	for i, v := range p.pcrs {
		claims[fmt.Sprintf("pcr%02d", i)] = hex.EncodeToString(v)
	}
	if initdataDigest != nil {
		want := InitdataPCRValue(initdataDigest)
		if subtle.ConstantTimeCompare(want[:], p.pcrs[InitdataPCR]) != 1 {
			return nil, fmt.Errorf("PCR %d is %x, want %x (the initdata digest %x extended once from zero): the guest did not bind this initdata",
				InitdataPCR, p.pcrs[InitdataPCR], want, initdataDigest)
		}
	}
	claims["init_data"] = hex.EncodeToString(initdataDigest)
	claims["report_data"] = hex.EncodeToString(extra)
	claims["clock"] = map[string]any{
		"clock":         strconv.FormatUint(p.attest.ClockInfo.Clock, 10),
		"reset_count":   int64(p.attest.ClockInfo.ResetCount),
		"restart_count": int64(p.attest.ClockInfo.RestartCount),
		"safe":          bool(p.attest.ClockInfo.Safe),
	}
	claims["firmware_version"] = fmt.Sprintf("%016x", p.attest.FirmwareVersion)
	if p.eventLog != nil {
		el, err := checkEventLog(p)
		if err != nil {
			return nil, err
		}
		claims["eventlog"] = el
	}
	return claims, nil
}

// InitdataPCRValue is PCR 8 after one extend with the initdata digest from
// its reset value. A sha256 digest is extended as it is (Trustee's
// binding); longer digests (sha384, sha512 initdata) are first hashed with
// sha256 to fit the sha256 bank.
func InitdataPCRValue(digest []byte) [sha256.Size]byte {
	d := digest
	if len(d) != sha256.Size {
		s := sha256.Sum256(d)
		d = s[:]
	}
	var zero [sha256.Size]byte
	return sha256.Sum256(append(zero[:], d...))
}

// checkAKTemplate makes sure the AK the TPM describes is the key that signs,
// and a restricted signing key born in a TPM: only such a key signs nothing
// but TPM-made TPMS_ATTEST structures. Without credential activation these
// attributes are the attester's word; they are checked so a misconfigured
// attester (an unrestricted AK) is caught.
func checkAKTemplate(pub *tpm2.TPMTPublic, akPub any) error {
	k, err := tpm2.Pub(*pub)
	if err != nil {
		return fmt.Errorf("field \"ak_tpm_public\": %w", err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if e, ok := k.(equaler); !ok || !e.Equal(akPub) {
		return errors.New("field \"ak_tpm_public\" describes another key than \"ak_public\"")
	}
	a := pub.ObjectAttributes
	var missing []string
	for name, set := range map[string]bool{
		"fixedTPM": a.FixedTPM, "fixedParent": a.FixedParent, "sensitiveDataOrigin": a.SensitiveDataOrigin,
		"restricted": a.Restricted, "sign": a.SignEncrypt,
	} {
		if !set {
			missing = append(missing, name)
		}
	}
	if a.Decrypt {
		missing = append(missing, "not decrypt")
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("the AK is not a restricted signing key of the TPM (attributes lack %s): create it with the TCG AK template", strings.Join(missing, ", "))
	}
	return nil
}

// oidSAN is subjectAltName. EK certificates have an empty subject and a
// critical SAN holding only a directoryName (TPM manufacturer, model,
// version), which crypto/x509 does not interpret and so refuses as an
// unhandled critical extension.
var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// checkEK verifies the EK certificate against the configured roots and
// returns its claims (nil without a certificate).
func (v *Verifier) checkEK(cert *x509.Certificate) (map[string]any, error) {
	if cert == nil {
		if v.cfg.EKRoots != nil {
			return nil, errors.New("the evidence has no EK certificate and EK roots are configured: the TPM must have its EK certificate in NV index 0x01c00002")
		}
		return nil, nil
	}
	sum := sha256.Sum256(cert.Raw)
	claims := map[string]any{
		"cert_sha256": hex.EncodeToString(sum[:]),
		"issuer":      cert.Issuer.String(),
		"serial":      cert.SerialNumber.String(),
		"verified":    false,
	}
	if v.cfg.EKRoots == nil {
		return claims, nil
	}
	c := *cert
	c.UnhandledCriticalExtensions = slices.DeleteFunc(slices.Clone(c.UnhandledCriticalExtensions),
		func(o asn1.ObjectIdentifier) bool { return o.Equal(oidSAN) })
	if _, err := c.Verify(x509.VerifyOptions{
		Roots:         v.cfg.EKRoots,
		Intermediates: v.cfg.EKIntermediates,
		CurrentTime:   v.cfg.Now(),
		// EK certificates carry the TCG EK usage (2.23.133.8.1), unknown
		// to crypto/x509.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("EK certificate (issuer %q, serial %s) does not chain to the configured EK roots: %w", cert.Issuer, cert.SerialNumber, err)
	}
	claims["verified"] = true
	return claims, nil
}

func hashOf(alg tpm2.TPMIAlgHash) (crypto.Hash, error) {
	switch alg {
	case tpm2.TPMAlgSHA256:
		return crypto.SHA256, nil
	case tpm2.TPMAlgSHA384:
		return crypto.SHA384, nil
	case tpm2.TPMAlgSHA512:
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("hash algorithm %#x is not accepted: use sha256, sha384 or sha512", uint16(alg))
}

// checkSignature verifies the quote's TPMT_SIGNATURE (RSASSA, RSAPSS or
// ECDSA) over message with the AK.
func checkSignature(akPub any, sig *tpm2.TPMTSignature, message []byte) error {
	switch sig.SigAlg {
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		var s *tpm2.TPMSSignatureRSA
		var err error
		if sig.SigAlg == tpm2.TPMAlgRSASSA {
			s, err = sig.Signature.RSASSA()
		} else {
			s, err = sig.Signature.RSAPSS()
		}
		if err != nil {
			return fmt.Errorf("quote signature: %w", err)
		}
		pub, ok := akPub.(*rsa.PublicKey)
		if !ok {
			return errors.New("quote has an RSA signature but the AK is not an RSA key")
		}
		h, err := hashOf(s.Hash)
		if err != nil {
			return fmt.Errorf("quote signature: %w", err)
		}
		d := h.New()
		d.Write(message)
		if sig.SigAlg == tpm2.TPMAlgRSASSA {
			err = rsa.VerifyPKCS1v15(pub, h, d.Sum(nil), s.Sig.Buffer)
		} else {
			err = rsa.VerifyPSS(pub, h, d.Sum(nil), s.Sig.Buffer, nil)
		}
		if err != nil {
			return fmt.Errorf("quote signature does not verify with the AK: %w", err)
		}
	case tpm2.TPMAlgECDSA:
		s, err := sig.Signature.ECDSA()
		if err != nil {
			return fmt.Errorf("quote signature: %w", err)
		}
		pub, ok := akPub.(*ecdsa.PublicKey)
		if !ok {
			return errors.New("quote has an ECDSA signature but the AK is not an EC key")
		}
		h, err := hashOf(s.Hash)
		if err != nil {
			return fmt.Errorf("quote signature: %w", err)
		}
		d := h.New()
		d.Write(message)
		r, ss := new(big.Int).SetBytes(s.SignatureR.Buffer), new(big.Int).SetBytes(s.SignatureS.Buffer)
		if !ecdsa.Verify(pub, d.Sum(nil), r, ss) {
			return errors.New("quote signature does not verify with the AK")
		}
	default:
		return fmt.Errorf("quote signature algorithm %#x is not supported: use RSASSA, RSAPSS or ECDSA", uint16(sig.SigAlg))
	}
	return nil
}

// checkPCRDigest makes sure the quote covers exactly the sha256 bank's PCRs
// 0-23 and that the PCR values sent hash to its pcrDigest.
func checkPCRDigest(p *parsed) error {
	sel := p.quoteInfo.PCRSelect.PCRSelections
	if len(sel) != 1 || sel[0].Hash != tpm2.TPMAlgSHA256 || len(sel[0].PCRSelect) != 3 ||
		sel[0].PCRSelect[0] != 0xff || sel[0].PCRSelect[1] != 0xff || sel[0].PCRSelect[2] != 0xff {
		return fmt.Errorf("the quote selects %s, want the sha256 bank's PCRs 0-23", describeSelection(sel))
	}
	h := sha256.New()
	for _, v := range p.pcrs {
		h.Write(v)
	}
	if got := h.Sum(nil); subtle.ConstantTimeCompare(got, p.quoteInfo.PCRDigest.Buffer) != 1 {
		return fmt.Errorf("the PCR values sent hash to %x, the quote signed %x: PCRs changed or were altered", got, p.quoteInfo.PCRDigest.Buffer)
	}
	return nil
}

func describeSelection(sel []tpm2.TPMSPCRSelection) string {
	if len(sel) == 0 {
		return "no PCRs"
	}
	parts := make([]string, 0, len(sel))
	for _, s := range sel {
		parts = append(parts, fmt.Sprintf("bank %#x bitmap %x", uint16(s.Hash), s.PCRSelect))
	}
	return strings.Join(parts, "; ")
}

// QuotedReportData returns the extraData of the evidence's quote, unchecked:
// an offline check (kbsctl evidence verify) has no nonce of its own and
// verifies the quote against what it carries.
func QuotedReportData(evidence []byte) ([]byte, error) {
	p, err := parseEvidence(evidence)
	if err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeTPM, err)
	}
	return p.attest.ExtraData.Buffer, nil
}

// EvidenceAK returns the evidence's AK public key, unchecked.
func EvidenceAK(evidence []byte) (crypto.PublicKey, error) {
	p, err := parseEvidence(evidence)
	if err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeTPM, err)
	}
	return p.akPub, nil
}

// LoadCertPool reads the PEM certificates in path (EK roots or
// intermediates, Config.EKRoots and EKIntermediates).
func LoadCertPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
