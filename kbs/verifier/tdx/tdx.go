// Package tdx verifies Intel TDX evidence: a DCAP quote v4 (go-tdx-guest
// verify + validate) and, when the guest sends it, the CC event log (CCEL)
// replayed against the quote's RTMRs (go-eventlog).
//
// Verification order: parse -> PCK chain to a trusted root, QE report and
// quote signatures, TCB info and QE identity collateral -> report-data and
// MRCONFIGID bindings -> TD field sanity -> event log -> claims. Whether the
// claims are good enough (MRTD, RTMRs, debug, TCB) is the attestation
// policy's decision, not this package's.
package tdx

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	_ "embed"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/validate"
	tdxverify "github.com/google/go-tdx-guest/verify"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/verifier"
)

// Size limits on untrusted input. A v4 quote with its PCK chain is about
// 5 KiB; a CCEL is at most a few hundred KiB (firmware pads it to 64-256 KiB).
const (
	MaxQuoteSize    = 64 << 10
	MaxEventLogSize = 1 << 20
	// MaxEvidenceSize bounds the evidence JSON (base64 grows data by 4/3).
	MaxEvidenceSize = (MaxQuoteSize+MaxEventLogSize)*4/3 + 4<<10
)

// MrConfigIDSize is the size of MRCONFIGID, which holds the initdata digest.
const MrConfigIDSize = 48

// debugAttribute is TD_ATTRIBUTES bit 0: the host may read and write the
// TD's memory and registers.
const debugAttribute = 1 << 0

//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

// Evidence is the TDX evidence document, as Trustee's guest-components TDX
// attester sends it and Trustee's TDX verifier parses it. Unknown fields
// (e.g. "aa_eventlog") are ignored.
type Evidence struct {
	// Quote is the DCAP quote, standard base64.
	Quote string `json:"quote"`
	// CCEventLog is the CC event log (the data behind the ACPI CCEL table),
	// standard base64; optional.
	CCEventLog *string `json:"cc_eventlog,omitempty"`
}

// Fetcher gets collateral by URL; *collateral.Fetcher implements it.
type Fetcher interface {
	Get(ctx context.Context, url string) (http.Header, []byte, error)
}

// Options configure a Verifier.
type Options struct {
	// Collateral fetches TCB info, QE identity and CRLs (required).
	Collateral Fetcher
	// PCSBaseURL, if set, replaces "https://api.trustedservices.intel.com"
	// in collateral URLs, e.g. a PCCS at "https://pccs.example:8081".
	PCSBaseURL string
	// ExtraRoots are roots trusted besides Intel's SGX root CA: only the
	// test-only roots of emulated-tdx platforms belong here. Evidence that
	// chains to one of them has the claim emulated=true.
	ExtraRoots []*x509.Certificate
	// NoRevocationCheck skips fetching and checking the PCK and root CA CRLs.
	NoRevocationCheck bool
	// Now is the verification time (time.Now if nil).
	Now func() time.Time
}

// Verifier verifies TDX evidence.
type Verifier struct {
	opts      Options
	intelRoot *x509.Certificate
}

var _ verifier.Verifier = (*Verifier)(nil)

// New returns a Verifier. It fails if no collateral fetcher is given or an
// extra root is not a self-signed CA certificate.
func New(o Options) (*Verifier, error) {
	if o.Collateral == nil {
		return nil, errors.New("tdx verifier: no collateral fetcher configured: TCB info and QE identity are required to verify a quote")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	for i, r := range o.ExtraRoots {
		if r == nil || !r.IsCA || r.CheckSignatureFrom(r) != nil {
			return nil, fmt.Errorf("tdx verifier: extra root %d is not a self-signed CA certificate: use the root exported by the emulated-tdx platform", i)
		}
	}
	block, _ := pem.Decode(intelRootPEM)
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("tdx verifier: embedded Intel SGX root CA: %w", err)
	}
	return &Verifier{opts: o, intelRoot: root}, nil
}

// Verify parses Evidence and verifies it; see VerifyQuote. The expected
// report data (at most 64 bytes) is zero-padded to REPORTDATA's 64 bytes.
func (v *Verifier) Verify(ctx context.Context, evidence json.RawMessage, expectedReportData, initdataDigest []byte) (map[string]any, error) {
	expectedReportData, err := verifier.FitReportData(kbstypes.TeeTDX, expectedReportData)
	if err != nil {
		return nil, err
	}
	quote, eventLog, err := ParseEvidence(evidence)
	if err != nil {
		return nil, err
	}
	return v.VerifyQuote(ctx, quote, eventLog, expectedReportData, initdataDigest)
}

// ParseEvidence decodes the evidence JSON into the raw quote and the raw CC
// event log (nil if absent). Errors are malformed-evidence CheckErrors.
func ParseEvidence(evidence []byte) (quote, eventLog []byte, err error) {
	if len(evidence) > MaxEvidenceSize {
		return nil, nil, malformed(fmt.Errorf("evidence is %d bytes, limit is %d", len(evidence), MaxEvidenceSize))
	}
	var ev Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		return nil, nil, malformed(fmt.Errorf("want {\"quote\":\"<base64>\",\"cc_eventlog\":\"<base64>\"}: %w", err))
	}
	if ev.Quote == "" {
		return nil, nil, malformed(errors.New("field \"quote\" is missing or empty"))
	}
	quote, err = decodeBase64("quote", ev.Quote, MaxQuoteSize)
	if err != nil {
		return nil, nil, err
	}
	if ev.CCEventLog != nil && *ev.CCEventLog != "" {
		eventLog, err = decodeBase64("cc_eventlog", *ev.CCEventLog, MaxEventLogSize)
		if err != nil {
			return nil, nil, err
		}
	}
	return quote, eventLog, nil
}

func decodeBase64(field, s string, limit int) ([]byte, error) {
	if base64.StdEncoding.DecodedLen(len(s)) > limit+3 {
		return nil, malformed(fmt.Errorf("field %q is longer than %d bytes", field, limit))
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, malformed(fmt.Errorf("field %q is not standard base64: %w", field, err))
	}
	if len(b) > limit {
		return nil, malformed(fmt.Errorf("field %q is %d bytes, limit is %d", field, len(b), limit))
	}
	return b, nil
}

// ParseQuote parses a raw DCAP quote. Only quote format v4 is supported
// (go-tdx-guest v0.3.1 does not parse v5 quotes).
func ParseQuote(raw []byte) (q *pb.QuoteV4, err error) {
	if len(raw) > MaxQuoteSize {
		return nil, malformed(fmt.Errorf("quote is %d bytes, limit is %d", len(raw), MaxQuoteSize))
	}
	// go-tdx-guest's parser slices by offsets read from the quote and can
	// panic on truncated or inconsistent input; a bad quote is an error here.
	defer func() {
		if r := recover(); r != nil {
			q, err = nil, malformed(fmt.Errorf("quote is truncated or its sizes are inconsistent (%v)", r))
		}
	}()
	parsed, err := abi.QuoteToProto(raw)
	if err != nil {
		return nil, malformed(fmt.Errorf("parse quote: %w", err))
	}
	q, ok := parsed.(*pb.QuoteV4)
	if !ok {
		return nil, malformed(fmt.Errorf("quote format %T is not supported, only v4", parsed))
	}
	return q, nil
}

// VerifyQuote verifies a raw quote and optional CC event log and returns the
// claims. expectedReportData nil skips the report-data check; only the
// offline checker (kbsctl) does that, the KBS always passes the binding.
// initdataDigest, when not nil, must equal MRCONFIGID (zero-padded to 48
// bytes).
func (v *Verifier) VerifyQuote(ctx context.Context, rawQuote, eventLog, expectedReportData, initdataDigest []byte) (map[string]any, error) {
	quote, err := ParseQuote(rawQuote)
	if err != nil {
		return nil, err
	}
	if len(eventLog) > MaxEventLogSize {
		return nil, malformed(fmt.Errorf("CC event log is %d bytes, limit is %d", len(eventLog), MaxEventLogSize))
	}
	now := v.opts.Now()

	root, emulated, err := v.trustedRoot(quote)
	if err != nil {
		return nil, err
	}
	get := &getter{ctx: ctx, f: v.opts.Collateral, base: v.opts.PCSBaseURL, seen: map[string]response{}}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	err = tdxverify.TdxQuote(quote, &tdxverify.Options{
		GetCollateral:    true,
		CheckRevocations: !v.opts.NoRevocationCheck,
		Getter:           get,
		Now:              now,
		TrustedRoots:     pool,
	})
	if err != nil && !tcbStatusOnly(err) {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("verify tdx quote: %w", ctxErr)
		}
		if expired := get.expired(quote, now); expired != "" {
			return nil, &verifier.CheckError{Check: verifier.CheckEvidence, Detail: "tdx collateral or certificates expired: " + expired, Err: err}
		}
		return nil, &verifier.CheckError{Check: verifier.CheckEvidence, Detail: "tdx quote verification failed", Err: err}
	}
	tcb, err := appraiseTCB(quote, get.served("/tdx/certification/v4/tcb"), get.served("/tdx/certification/v4/qe/identity"))
	if err != nil {
		return nil, &verifier.CheckError{Check: verifier.CheckEvidence, Detail: "tdx quote verification failed", Err: err}
	}

	body := quote.GetTdQuoteBody()
	if expectedReportData != nil && subtle.ConstantTimeCompare(body.GetReportData(), expectedReportData) != 1 {
		return nil, verifier.ReportDataMismatch(expectedReportData, body.GetReportData())
	}
	var wantConfigID []byte
	if initdataDigest != nil {
		if len(initdataDigest) > MrConfigIDSize {
			return nil, &verifier.CheckError{Check: verifier.CheckEvidence, Detail: fmt.Sprintf(
				"initdata digest is %d bytes but TDX MRCONFIGID holds %d: use initdata algorithm sha384 or sha256",
				len(initdataDigest), MrConfigIDSize)}
		}
		wantConfigID = make([]byte, MrConfigIDSize)
		copy(wantConfigID, initdataDigest)
		if !bytes.Equal(body.GetMrConfigId(), wantConfigID) {
			return nil, &verifier.CheckError{Check: verifier.CheckEvidence, Detail: fmt.Sprintf(
				"MRCONFIGID %x is not the digest of the initdata the guest sent (%x): the TD was launched with other initdata",
				body.GetMrConfigId(), wantConfigID)}
		}
	}
	// validate repeats the binding checks and rejects reserved XFAM and
	// TD_ATTRIBUTES bits.
	if err := validate.TdxQuote(quote, &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{
		ReportData: expectedReportData,
		MrConfigID: wantConfigID,
	}}); err != nil {
		return nil, &verifier.CheckError{Check: verifier.CheckEvidence, Detail: "tdx quote fields are invalid", Err: err}
	}

	claims := quoteClaims(quote)
	claims["emulated"] = emulated
	claims["init_data"] = hex.EncodeToString(initdataDigest)
	claims["tcb_status"] = tcb.Status
	claims["tcb_date"] = tcb.Date
	claims["advisory_ids"] = append([]string{}, tcb.AdvisoryIDs...)
	claims["qe_tcb_status"] = tcb.QEStatus
	claims["fmspc"] = tcb.FMSPC
	claims["tcb_evaluation_data_number"] = tcb.EvaluationDataNumber
	if eventLog != nil {
		ccel, err := replayEventLog(eventLog, body.GetRtmrs())
		if err != nil {
			return nil, &verifier.CheckError{Check: verifier.CheckEvidence, Detail: "CC event log does not replay to the quote's RTMRs", Err: err}
		}
		claims["ccel"] = ccel
	}
	return claims, nil
}

// trustedRoot returns the configured root the quote's PCK chain ends at,
// matched by public key, and whether it is an extra (emulated) root.
func (v *Verifier) trustedRoot(quote *pb.QuoteV4) (*x509.Certificate, bool, error) {
	chain := quote.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain()
	var last *pem.Block
	for rest := chain; ; {
		b, r := pem.Decode(rest)
		if b == nil {
			break
		}
		last, rest = b, r
	}
	if last == nil {
		return nil, false, malformed(errors.New("quote carries no PEM PCK certificate chain"))
	}
	root, err := x509.ParseCertificate(last.Bytes)
	if err != nil {
		return nil, false, malformed(fmt.Errorf("root certificate of the PCK chain: %w", err))
	}
	if bytes.Equal(root.RawSubjectPublicKeyInfo, v.intelRoot.RawSubjectPublicKeyInfo) {
		return v.intelRoot, false, nil
	}
	for _, r := range v.opts.ExtraRoots {
		if bytes.Equal(root.RawSubjectPublicKeyInfo, r.RawSubjectPublicKeyInfo) {
			return r, true, nil
		}
	}
	sum := sha256.Sum256(root.RawSubjectPublicKeyInfo)
	return nil, false, &verifier.CheckError{Check: verifier.CheckEvidence, Detail: fmt.Sprintf(
		"PCK certificate chain ends at root %q with key sha256:%x, which this KBS does not trust: "+
			"genuine TDX quotes chain to Intel's SGX Root CA; an emulated-tdx platform's root must be configured explicitly",
		root.Subject.CommonName, sum)}
}

func quoteClaims(q *pb.QuoteV4) map[string]any {
	b := q.GetTdQuoteBody()
	h := q.GetHeader()
	attrs := b.GetTdAttributes()
	claims := map[string]any{
		"version":         h.GetVersion(),
		"qe_svn":          binary.LittleEndian.Uint16(h.GetQeSvn()),
		"pce_svn":         binary.LittleEndian.Uint16(h.GetPceSvn()),
		"qe_vendor_id":    hex.EncodeToString(h.GetQeVendorId()),
		"tee_tcb_svn":     hex.EncodeToString(b.GetTeeTcbSvn()),
		"mr_seam":         hex.EncodeToString(b.GetMrSeam()),
		"mr_signer_seam":  hex.EncodeToString(b.GetMrSignerSeam()),
		"seam_attributes": hex.EncodeToString(b.GetSeamAttributes()),
		"td_attributes":   hex.EncodeToString(attrs),
		"debug":           binary.LittleEndian.Uint64(attrs)&debugAttribute != 0,
		"xfam":            hex.EncodeToString(b.GetXfam()),
		"mr_td":           hex.EncodeToString(b.GetMrTd()),
		"mr_config_id":    hex.EncodeToString(b.GetMrConfigId()),
		"mr_owner":        hex.EncodeToString(b.GetMrOwner()),
		"mr_owner_config": hex.EncodeToString(b.GetMrOwnerConfig()),
		"report_data":     hex.EncodeToString(b.GetReportData()),
	}
	for i, r := range b.GetRtmrs() {
		claims[fmt.Sprintf("rtmr%d", i)] = hex.EncodeToString(r)
	}
	return claims
}

func malformed(err error) error { return verifier.MalformedEvidence(kbstypes.TeeTDX, err) }

// LoadRoots reads the PEM certificates in path (extra roots of emulated-tdx
// platforms, Options.ExtraRoots).
func LoadRoots(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for rest := b; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return out, nil
}
