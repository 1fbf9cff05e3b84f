// Package kbstypes is the wire contract between Cloak's attestation agent
// (guest side) and its Key Broker Service (host/relying-party side): the
// request and response bodies of Trustee's KBS protocol version 0.4.0, the
// runtime-data binding, resource paths and error bodies.
//
// It is the only package both sides import (like Trustee's kbs-types crate),
// so it depends on nothing else in the repository.
package kbstypes

import "encoding/json"

// ProtocolVersion is the Trustee KBS protocol version Cloak speaks.
const ProtocolVersion = "0.4.0"

// Size limits shared by both sides. The KBS refuses larger bodies with 413;
// the agent refuses larger responses.
const (
	MaxRequestBody  = 2 << 20 // default limit on any request body
	MaxResponseBody = 8 << 20 // limit the agent applies to KBS responses
	MaxResourceSize = 1 << 20 // largest resource value the KBS stores
)

// Tee names, as in Trustee's kbs-types.
const (
	TeeSample = "sample"
	TeeSNP    = "snp"
	TeeTDX    = "tdx"
	TeeTPM    = "tpm"
)

// SessionCookie is the cookie that carries the KBS session id.
const SessionCookie = "kbs-session-id"

// Request is the body of POST /kbs/v0/auth. ExtraParams is reserved: Trustee
// clients send any JSON value there (often "" or {}), so it is kept raw.
type Request struct {
	Version     string          `json:"version"`
	Tee         string          `json:"tee"`
	ExtraParams json.RawMessage `json:"extra-params"`
}

// Challenge is the answer to POST /kbs/v0/auth. Nonce is base64 (standard
// encoding) of 32 random bytes. ExtraParams is an empty string in 0.4.0.
type Challenge struct {
	Nonce       string `json:"nonce"`
	ExtraParams string `json:"extra-params"`
}

// InitData carries the guest's initdata document verbatim.
type InitData struct {
	Format string `json:"format"` // "toml"
	Body   string `json:"body"`
}

// RuntimeData is what the guest binds into its evidence's report data.
// TeePubKey is a JWK (RFC 7517) kept as raw JSON so that the binding hash is
// computed over exactly what the guest sent.
type RuntimeData struct {
	Nonce     string          `json:"nonce"`
	TeePubKey json.RawMessage `json:"tee-pubkey"`
}

// TeeEvidence holds the TEE-specific evidence. PrimaryEvidence is the
// evidence document of the TEE named in Request.Tee (for sample: SampleEvidence).
type TeeEvidence struct {
	PrimaryEvidence    json.RawMessage `json:"primary_evidence"`
	AdditionalEvidence string          `json:"additional_evidence"`
}

// Attestation is the body of POST /kbs/v0/attest.
type Attestation struct {
	InitData    *InitData   `json:"init-data,omitempty"`
	RuntimeData RuntimeData `json:"runtime-data"`
	TeeEvidence TeeEvidence `json:"tee-evidence"`
}

// AttestationToken is the answer to POST /kbs/v0/attest: an EAR JWT.
type AttestationToken struct {
	Token string `json:"token"`
}

// SampleEvidence is the evidence of the unsigned development TEE "sample".
// ReportData is base64 (standard encoding) of the report data unpadded: for
// the KBS, the 48-byte RuntimeDataDigest (Trustee's sample attester and
// verifier, unlike SNP and TDX, do not pad it to 64 bytes).
type SampleEvidence struct {
	SVN        string `json:"svn"`
	ReportData string `json:"report_data"`
}

// Problem is an RFC 7807 error body (media type application/problem+json).
// Detail names the check that failed and what to do about it.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	// Check is a stable machine-readable name of the failing check, e.g.
	// "nonce", "report-data", "session-expired", "resource-policy".
	Check string `json:"check,omitempty"`
}

// ProblemContentType is the media type of Problem bodies.
const ProblemContentType = "application/problem+json"
