// Package adminapi is the contract of the KBS admin API, shared by the KBS
// server and kbsctl. Trustee-compatible routes keep Trustee's bodies; the
// rest are Cloak extensions under the same /kbs/v0 prefix.
//
// Every admin request carries "Authorization: Bearer <JWT>", an EdDSA
// (Ed25519) JWT with claims iat, exp and role, signed by a key whose public
// half the KBS was started with (--admin-public-key).
package adminapi

import "time"

// Roles carried in the admin token's "role" claim.
const (
	RoleAdmin   = "admin"   // everything
	RoleAuditor = "auditor" // read-only: list resources, read policies, reference values and audit; never resource values
)

// Routes (all under the KBS base URL).
//
//	POST   /kbs/v0/resource/{repo}/{type}/{tag}   body: raw value          -> 200 ResourceInfo        (admin)
//	DELETE /kbs/v0/resource/{repo}/{type}/{tag}                            -> 204                     (admin)
//	GET    /kbs/v0/admin/resource/{repo}/{type}/{tag}                      -> 200 raw value           (admin)
//	GET    /kbs/v0/resources                                               -> 200 ResourceList        (admin, auditor)
//	POST   /kbs/v0/resource-policy                body: PolicyBody         -> 200                     (admin)
//	GET    /kbs/v0/resource-policy                                         -> 200 PolicyBody          (admin, auditor)
//	POST   /kbs/v0/attestation-policy             body: PolicyBody         -> 200                     (admin)
//	GET    /kbs/v0/attestation-policy                                      -> 200 PolicyBody          (admin, auditor)
//	POST   /kbs/v0/reference-values               body: ReferenceValue     -> 200                     (admin)
//	GET    /kbs/v0/reference-values                                        -> 200 ReferenceValues     (admin, auditor)
//	POST   /kbs/v0/reference-values/import        body: COSE_Sign1 bundle  -> 200 ImportResult        (admin)
//	GET    /kbs/v0/audit?after=SEQ&limit=N                                 -> 200 AuditPage           (admin, auditor)
const (
	PathResource          = "/kbs/v0/resource/"
	PathAdminResource     = "/kbs/v0/admin/resource/"
	PathResources         = "/kbs/v0/resources"
	PathResourcePolicy    = "/kbs/v0/resource-policy"
	PathAttestationPolicy = "/kbs/v0/attestation-policy"
	PathReferenceValues   = "/kbs/v0/reference-values"
	PathReferenceImport   = "/kbs/v0/reference-values/import"
	PathAudit             = "/kbs/v0/audit"
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
// name, visible to attestation policies as data.reference.<name>. An empty
// Values list deletes the name.
type ReferenceValue struct {
	Name   string   `json:"name"`
	Values []string `json:"values"`
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

// Audit entry kinds.
const (
	KindAttest  = "attest"
	KindRelease = "release"
)

// Finding is one claim compared with its reference values during appraisal.
type Finding struct {
	Claim     string `json:"claim"`               // e.g. "sample.svn", "snp.measurement"
	Group     string `json:"group,omitempty"`     // EAR trust-vector group, e.g. "executables"
	Value     any    `json:"value,omitempty"`     // the value in the evidence
	Reference any    `json:"reference,omitempty"` // what it was compared with
	OK        bool   `json:"ok"`
	Message   string `json:"message,omitempty"`
	// ReferenceName is the reference value the claim was compared with.
	ReferenceName string `json:"reference_name,omitempty"`
	// Source is the signed bundle of the value that matched, if the value
	// was imported from one (audit entries only).
	Source *ReferenceValueSource `json:"source,omitempty"`
	// ReferenceBundles, when the claim matched none, are the bundles the
	// values it was compared with came from (audit entries only).
	ReferenceBundles []string `json:"reference_bundles,omitempty"`
}

// AuditEntry records one attestation or release decision.
type AuditEntry struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Kind       string    `json:"kind"` // KindAttest | KindRelease
	Session    string    `json:"session,omitempty"`
	Tee        string    `json:"tee,omitempty"`
	Resource   string    `json:"resource,omitempty"` // release only: repo/type/tag
	RemoteAddr string    `json:"remote_addr,omitempty"`
	// Verdict: for attest "affirming" | "warning" | "contraindicated" | "none"
	// | "rejected" (evidence refused before appraisal); for release "allow" | "deny".
	Verdict string `json:"verdict"`
	// Check names what decided: "nonce", "report-data", "evidence",
	// "session-expired", "attestation-policy", "resource-policy", "unknown-resource", ...
	Check       string         `json:"check"`
	Rule        string         `json:"rule,omitempty"`   // the policy rule that decided, if a policy did
	Detail      string         `json:"detail,omitempty"` // one human sentence
	TrustVector map[string]int `json:"trust_vector,omitempty"`
	Findings    []Finding      `json:"findings,omitempty"`
	PolicyID    string         `json:"policy_id,omitempty"`
}

// AuditPage is the answer to GET /kbs/v0/audit. Next is the seq to pass as
// "after" to continue (equal to the last entry's seq, or to "after" when empty).
type AuditPage struct {
	Entries []AuditEntry `json:"entries"`
	Next    uint64       `json:"next"`
}
