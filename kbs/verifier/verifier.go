// Package verifier defines how the KBS checks TEE evidence: one Verifier per
// TEE type, looked up by the TEE name the client announced in /kbs/v0/auth.
// A verifier only checks evidence and extracts claims; whether the claims are
// good enough is decided later by the attestation policy.
package verifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// Verifier checks one TEE's evidence. expectedReportData is the binding of
// nonce and TEE key the evidence must carry, kbstypes.RuntimeDataDigest (48
// bytes), as Trustee's attestation service hands it to its verifiers; each
// verifier fits it to its TEE's field (FitReportData for the 64-byte fields
// of snp and tdx, kbstypes.TPMReportData for tpm's 32 bytes; sample compares
// it unpadded). initdataDigest is the
// digest of the init-data the guest sent (nil if it sent none). On success it
// returns the evidence's claims, which become input to the attestation policy.
type Verifier interface {
	Verify(ctx context.Context, evidence json.RawMessage, expectedReportData, initdataDigest []byte) (map[string]any, error)
}

// Check names used by CheckError; the HTTP layer reports them to clients.
const (
	CheckEvidence   = "evidence"    // evidence malformed or its signature invalid
	CheckReportData = "report-data" // evidence not bound to this nonce and TEE key
	CheckTee        = "tee"         // no verifier for the TEE
)

// CheckError reports which check refused the evidence.
type CheckError struct {
	Check  string // one of the Check* constants
	Detail string // human sentence naming what was wrong
	Err    error  // underlying cause, may be nil
}

func (e *CheckError) Error() string {
	if e.Err != nil {
		return e.Detail + ": " + e.Err.Error()
	}
	return e.Detail
}

func (e *CheckError) Unwrap() error { return e.Err }

// FitReportData returns expected zero-padded to the 64-byte report-data field
// of SNP and TDX evidence, as Trustee's verifiers pad it
// (deps/verifier/src/lib.rs regularize_data). Empty or longer input is a
// caller's bug, never the guest's, so it is not a CheckError.
func FitReportData(tee string, expected []byte) ([]byte, error) {
	if len(expected) == 0 {
		return nil, fmt.Errorf("%s verifier: no expected report data", tee)
	}
	out, err := kbstypes.PadReportData(expected)
	if err != nil {
		return nil, fmt.Errorf("%s verifier: expected %w", tee, err)
	}
	return out, nil
}

// ReportDataMismatch reports evidence whose report data is not the expected
// binding, showing both values so an operator can tell a wrong nonce or key
// from a broken guest.
func ReportDataMismatch(expected, got []byte) error {
	return &CheckError{
		Check:  CheckReportData,
		Detail: fmt.Sprintf("report data mismatch: expected %x, got %x", expected, got),
	}
}

// MalformedEvidence reports evidence that could not be parsed.
func MalformedEvidence(tee string, err error) error {
	return &CheckError{Check: CheckEvidence, Detail: "malformed " + tee + " evidence", Err: err}
}

// ErrUnknownTee is returned by Lookup for a TEE without a verifier.
var ErrUnknownTee = errors.New("no verifier for this TEE")

// Registry maps TEE names (as in kbstypes, e.g. "sample", "snp") to verifiers.
type Registry struct {
	mu sync.RWMutex
	m  map[string]Verifier
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{m: map[string]Verifier{}} }

// Register adds or replaces the verifier of a TEE.
func (r *Registry) Register(tee string, v Verifier) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m[tee] = v
}

// Lookup returns the verifier of a TEE, or a CheckError wrapping ErrUnknownTee
// that lists the supported TEEs.
func (r *Registry) Lookup(tee string) (Verifier, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if v, ok := r.m[tee]; ok {
		return v, nil
	}
	return nil, &CheckError{
		Check:  CheckTee,
		Detail: fmt.Sprintf("TEE %q is not supported by this KBS (supported: %v)", tee, r.teesLocked()),
		Err:    ErrUnknownTee,
	}
}

func (r *Registry) teesLocked() []string {
	out := make([]string, 0, len(r.m))
	for k := range r.m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
