// Package adminapi is the contract of the KBS admin API, shared by the KBS
// server and kbsctl. Trustee-compatible routes keep Trustee's bodies; the
// rest are Cloak extensions under the same /kbs/v0 prefix.
//
// Every admin request carries "Authorization: Bearer <JWT>", an EdDSA
// (Ed25519) JWT with claims iat, exp and optionally role, signed by a key
// whose public half the KBS was started with. The key decides the role
// (--admin-public-key: admin, --auditor-public-key: auditor); a role claim
// can only narrow it, and an auditor key's token claiming admin is refused.
package adminapi

import "time"

// Roles: granted by the key that signed the admin token; its optional "role"
// claim may narrow admin to auditor.
const (
	RoleAdmin   = "admin"   // everything
	RoleAuditor = "auditor" // read-only: list resources, read policies, reference values and audit; never resource values
)

// Routes (all under the KBS base URL).
//
//	POST   /kbs/v0/resource/{repo}/{type}/{tag}   body: raw value          -> 200 ResourceInfo        (admin)
//	DELETE /kbs/v0/resource/{repo}/{type}/{tag}                            -> 200                     (admin)
//	GET    /kbs/v0/admin/resource/{repo}/{type}/{tag}                      -> 200 raw value           (admin)
//	GET    /kbs/v0/resources                                               -> 200 ResourceList        (admin, auditor)
//	POST   /kbs/v0/resource-policy                body: PolicyBody         -> 200                     (admin)
//	GET    /kbs/v0/resource-policy                                         -> 200 PolicyBody          (admin, auditor)
//	POST   /kbs/v0/attestation-policy             body: PolicyBody         -> 200                     (admin)
//	GET    /kbs/v0/attestation-policy                                      -> 200 PolicyBody          (admin, auditor)
//	POST   /kbs/v0/reference-values               body: ReferenceValue     -> 200                     (admin)
//	GET    /kbs/v0/reference-values                                        -> 200 ReferenceValues     (admin, auditor)
//	DELETE /kbs/v0/reference-values/{name}                                 -> 204                     (admin)
//	POST   /kbs/v0/reference-values/import        body: COSE_Sign1 bundle  -> 200 ImportResult        (admin)
//	POST   /kbs/v0/reference-value                body: TrusteeReferenceValueMessage -> 200           (admin)
//	GET    /kbs/v0/reference-value/{name}                                  -> 200 JSON list of values (admin, auditor)
//	GET    /kbs/v0/audit?after=SEQ&limit=N&kind=K                          -> 200 AuditPage           (admin, auditor)
const (
	PathResource          = "/kbs/v0/resource/"
	PathAdminResource     = "/kbs/v0/admin/resource/"
	PathResources         = "/kbs/v0/resources"
	PathResourcePolicy    = "/kbs/v0/resource-policy"
	PathAttestationPolicy = "/kbs/v0/attestation-policy"
	PathReferenceValues   = "/kbs/v0/reference-values"
	PathReferenceImport   = "/kbs/v0/reference-values/import"
	// PathTrusteeReferenceValue is Trustee's reference-value route (its
	// KBS fronting its RVPS), served over the same store.
	PathTrusteeReferenceValue = "/kbs/v0/reference-value"
	PathAudit                 = "/kbs/v0/audit"
)

// ResourceInfo describes a stored resource, never its value.
type ResourceInfo struct {
	Path    string    `json:"path"`
	Size    int       `json:"size"`
	Updated time.Time `json:"updated"`
}

// ResourceList is the answer to GET /kbs/v0/resources, sorted by path.
type ResourceList struct {
	Resources []ResourceInfo `json:"resources"`
}

// PolicyBody carries a Rego policy. Policy is the Rego source in base64url
// without padding (Trustee's encoding); the KBS also accepts padded and
// standard base64. Type is "rego"; PolicyID names the policy ("default").
// For the resource policy only Policy is used.
type PolicyBody struct {
	Type     string `json:"type,omitempty"`
	PolicyID string `json:"policy_id,omitempty"`
	Policy   string `json:"policy"`
}

// ReferenceValue sets (replaces) the accepted values of one reference value
// name, visible to attestation policies as data.reference.<name>. The KBS
// checks it with CheckReferenceValues: a known name (KnownReferenceValues)
// takes only values shaped like its claim, any other name only with Custom;
// an empty Values list is refused (DELETE deletes a name).
type ReferenceValue struct {
	Name   string   `json:"name"`
	Values []string `json:"values"`
	Custom bool     `json:"custom,omitempty"`
}

// ReferenceValues is the answer to GET /kbs/v0/reference-values. Sources
// names, for each value that came from a signed bundle, that bundle:
// Sources[name][value].
type ReferenceValues struct {
	ReferenceValues map[string][]string                        `json:"reference_values"`
	Sources         map[string]map[string]ReferenceValueSource `json:"sources,omitempty"`
}

// ContentTypeCOSE is the media type of a reference-value bundle
// (measurements/bundle): a COSE_Sign1 over a CBOR document.
const ContentTypeCOSE = "application/cose"

// ReferenceValueSource is where a stored reference value came from: the
// signed bundle it was imported from and the key that signed it.
type ReferenceValueSource struct {
	Bundle     string    `json:"bundle"`                // "sha256:<hex>" of the signed document
	BundleName string    `json:"bundle_name,omitempty"` // the document's own name
	Signer     string    `json:"signer"`                // hex SHA-256 of the signer's PKIX public key
	Imported   time.Time `json:"imported"`
}

// ImportResult is the answer to POST /kbs/v0/reference-values/import: every
// value of the bundle, New when it was not stored before.
type ImportResult struct {
	ReferenceValueSource
	Values []ImportedValue `json:"values"`
}

// ImportedValue is one value of an imported bundle.
type ImportedValue struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	New   bool   `json:"new"`
}

// Audit entry kinds, also the values of the audit route's kind filter.
const (
	KindAttest  = "attest"
	KindRelease = "release"
	KindAdmin   = "admin" // a change made through the admin API
)

// Admin actions recorded in AuditEntry.Action.
const (
	ActionResourceSet          = "resource.set"
	ActionResourceDelete       = "resource.delete"
	ActionResourcePolicySet    = "resource-policy.set"
	ActionAttestationPolicySet = "attestation-policy.set"
	ActionReferenceValueSet    = "reference-value.set"
	ActionReferenceValueDelete = "reference-value.delete"
	ActionReferenceImport      = "reference-values.import"
)

// VerdictApplied is the verdict of an admin entry: the change was stored.
const VerdictApplied = "applied"

// Finding is one claim compared with its reference values during appraisal.
type Finding struct {
	Claim     string `json:"claim"`               // e.g. "sample.svn", "snp.measurement"
	Group     string `json:"group,omitempty"`     // EAR trust-vector group, e.g. "executables"
	Value     any    `json:"value,omitempty"`     // the value in the evidence
	Reference any    `json:"reference,omitempty"` // what it was compared with
	// ReferenceCount replaces Reference when the accepted values were too
	// many to repeat in every token and audit entry: how many there were.
	ReferenceCount int    `json:"reference_count,omitempty"`
	OK             bool   `json:"ok"`
	Message        string `json:"message,omitempty"`
	// ReferenceName is the reference value the claim was compared with.
	ReferenceName string `json:"reference_name,omitempty"`
	// Source is the signed bundle of the value that matched, if the value
	// was imported from one (audit entries only).
	Source *ReferenceValueSource `json:"source,omitempty"`
	// ReferenceBundles, when the claim matched none, are the bundles the
	// values it was compared with came from (audit entries only).
	ReferenceBundles []string `json:"reference_bundles,omitempty"`
}

// AuditEntry records one attestation or release decision, or one admin
// change.
type AuditEntry struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`              // KindAttest | KindRelease | KindAdmin
	Session string    `json:"session,omitempty"` // attest and release: the attestation session, which joins them
	// TokenID is the jti of the attestation token an attest entry issued and
	// a release relied on: it joins a release by Bearer token, which comes
	// without the session, to its attestation.
	TokenID string `json:"token_id,omitempty"`
	Tee     string `json:"tee,omitempty"`
	// Emulated marks attest and release entries of evidence from an
	// emulated TEE (signed on the host: no hardware protection).
	Emulated   bool   `json:"emulated,omitempty"`
	Resource   string `json:"resource,omitempty"` // release only: repo/type/tag
	RemoteAddr string `json:"remote_addr,omitempty"`
	// Verdict: for attest "affirming" | "warning" | "contraindicated" | "none"
	// | "rejected" (evidence refused before appraisal); for release "allow" |
	// "deny"; for admin VerdictApplied.
	Verdict string `json:"verdict"`
	// Check names what decided: "nonce", "report-data", "evidence",
	// "session-expired", "attestation-policy", "resource-policy", "unknown-resource", ...
	Check       string         `json:"check"`
	Rule        string         `json:"rule,omitempty"`   // the policy rule that decided, if a policy did
	Detail      string         `json:"detail,omitempty"` // one human sentence
	TrustVector map[string]int `json:"trust_vector,omitempty"`
	Findings    []Finding      `json:"findings,omitempty"`
	PolicyID    string         `json:"policy_id,omitempty"`

	// Admin entries only. Key is the fingerprint of the key that signed the
	// request (hex SHA-256 of its PKIX public key) and Role the role it acted
	// with; Action is one of the Action* names and Target what it changed
	// (resource path, policy id, reference value name, bundle id). Digest is
	// "sha256:<hex>" of the new value, never the value itself; none for a
	// deletion.
	Key    string `json:"key,omitempty"`
	Role   string `json:"role,omitempty"`
	Action string `json:"action,omitempty"`
	Target string `json:"target,omitempty"`
	Digest string `json:"digest,omitempty"`
}

// AuditPage is the answer to GET /kbs/v0/audit. Next is the seq to pass as
// "after" to continue: the last entry examined, which with a kind filter may
// be past the last entry returned ("after" when there was none).
type AuditPage struct {
	Entries []AuditEntry `json:"entries"`
	Next    uint64       `json:"next"`
}
