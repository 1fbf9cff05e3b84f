package kbstypes

// TPMEvidence is the "tpm" primary evidence, the wire format both the
// guest's attester and the KBS's verifier use. The first three fields are
// what Trustee's TPM attester sends and its verifier reads; the others are
// optional Cloak additions that Trustee ignores.
type TPMEvidence struct {
	// AKPublic is base64 of the AK's DER SubjectPublicKeyInfo.
	AKPublic string   `json:"ak_public"`
	Quote    TPMQuote `json:"tpm_quote"`
	// ReportData is base64 of the 32 bytes the quote's extraData carries
	// (TPMReportData: the runtime-data digest cut to 32 bytes, as
	// guest-components' TPM attester and Trustee's verifier do). Cloak's
	// verifier checks it equals the quote's; Trustee ignores it.
	ReportData string `json:"report_data,omitempty"`
	// AKTPMPublic is base64 of the AK's TPMT_PUBLIC (attributes, scheme).
	AKTPMPublic string `json:"ak_tpm_public,omitempty"`
	// EKCert is the PEM endorsement-key certificate from the TPM's NV.
	EKCert string `json:"ek_cert,omitempty"`
	// EventLog is base64 of the TCG crypto-agile firmware event log.
	EventLog string `json:"eventlog,omitempty"`
}

// TPMQuote is a TPM2_Quote result.
type TPMQuote struct {
	// Signature is base64 of the TPMT_SIGNATURE.
	Signature string `json:"signature"`
	// Message is base64 of the signed TPMS_ATTEST.
	Message string `json:"message"`
	// PCRs are the hex sha256 values of PCR 0 to 23.
	PCRs []string `json:"pcrs"`
}
