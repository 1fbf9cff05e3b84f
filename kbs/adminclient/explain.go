package adminclient

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/veraison/ear"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
)

// trustGroups lists the AR4SI trust-vector claims in the order the EAR
// draft (and ear.TrustVector) defines them, with the label ear's report uses.
var trustGroups = []struct{ name, label string }{
	{"instance-identity", "Instance Identity"},
	{"configuration", "Configuration"},
	{"executables", "Executables"},
	{"file-system", "File System"},
	{"hardware", "Hardware"},
	{"runtime-opaque", "Runtime Opaque"},
	{"storage-opaque", "Storage Opaque"},
	{"sourced-data", "Sourced Data"},
}

// checkPhrases says in words what decided, by adminapi.AuditEntry.Check.
var checkPhrases = map[string]string{
	"nonce":              "at the nonce check (the evidence did not answer this session's challenge)",
	"report-data":        "at the report-data check (the evidence does not bind the nonce and TEE key it came with)",
	"evidence":           "while verifying the evidence",
	"session-expired":    "because the session had expired",
	"attestation-policy": "by the attestation policy",
	"resource-policy":    "by the resource policy",
	"unknown-resource":   "because no such resource is stored",
}

// Explain describes one audit entry in a paragraph an operator can act on:
// who asked for what, what the KBS decided and which check decided it, and,
// for anything short of success, each trust claim and reference-value
// comparison that went wrong.
func Explain(e adminapi.AuditEntry) string {
	if e.Kind == adminapi.KindAdmin {
		return explainAdmin(e)
	}
	var b strings.Builder
	b.WriteString(subject(e))
	b.WriteString(" " + verdictPhrase(e))
	if p, ok := checkPhrases[e.Check]; ok {
		b.WriteString(" " + p)
	} else if e.Check != "" {
		fmt.Fprintf(&b, " at check %q", e.Check)
	}
	var why []string
	if e.PolicyID != "" {
		why = append(why, fmt.Sprintf("policy %q", e.PolicyID))
	}
	if e.Rule != "" {
		why = append(why, "rule "+e.Rule)
	}
	if len(why) > 0 {
		b.WriteString(" (" + strings.Join(why, ", ") + ")")
	}
	if e.Detail != "" {
		b.WriteString(": " + strings.TrimSuffix(e.Detail, "."))
	}
	b.WriteString(".")

	if s := trustSentence(e.TrustVector, failed(e)); s != "" {
		b.WriteString(" " + s)
	}
	if s := findingsSentence(e.Findings, failed(e)); s != "" {
		b.WriteString(" " + s)
	}
	// Audit entries quote values a guest chose (evidence claims, TEE names).
	return kbstypes.SafeText(b.String())
}

// explainAdmin describes an admin change: which key did what to what, and
// the digest of the value it stored.
func explainAdmin(e adminapi.AuditEntry) string {
	key := e.Key
	if len(key) > 16 {
		key = key[:16] // enough to tell keys apart; -o json has all of it
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Admin change %s of %s by %s key %s", orUnknown(e.Action, "(no action)"), orUnknown(e.Target, "(no target)"),
		orUnknown(e.Role, "an"), orUnknown(key, "(unknown)"))
	if e.Digest != "" {
		b.WriteString("; new value " + e.Digest)
	}
	b.WriteString(".")
	return kbstypes.SafeText(b.String())
}

// maxRemembered bounds the attestations an Explainer keeps; a long
// "audit --follow" must not grow without limit.
const maxRemembered = 4096

// Explainer explains a stream of audit entries in order. It remembers each
// session's attestation, so a release entry that does not repeat the trust
// vector and findings is explained with those of the attestation that
// authorized it.
type Explainer struct {
	attest map[string]adminapi.AuditEntry
}

// Explain explains e, borrowing the session's attestation claims for a
// release when e carries none.
func (x *Explainer) Explain(e adminapi.AuditEntry) string {
	// A release by Bearer token has no session; its token id joins it.
	join := e.Session
	if join == "" && e.TokenID != "" {
		join = "token " + e.TokenID
	}
	if join == "" {
		return Explain(e)
	}
	switch e.Kind {
	case adminapi.KindAttest:
		if x.attest == nil || len(x.attest) >= maxRemembered {
			x.attest = map[string]adminapi.AuditEntry{}
		}
		x.attest[join] = e
		if e.TokenID != "" {
			x.attest["token "+e.TokenID] = e
		}
	case adminapi.KindRelease:
		if a, ok := x.attest[join]; ok && len(e.TrustVector) == 0 && len(e.Findings) == 0 {
			e.TrustVector, e.Findings = a.TrustVector, a.Findings
		}
	}
	return Explain(e)
}

func subject(e adminapi.AuditEntry) string {
	var who string
	if e.Session != "" {
		who = "session " + shortID(e.Session)
	}
	if e.Tee != "" {
		if who == "" {
			who = "a client"
		}
		if e.Emulated {
			who += " (emulated " + e.Tee + " TEE, no hardware protection)"
		} else {
			who += " (" + e.Tee + " TEE)"
		}
	}
	switch e.Kind {
	case adminapi.KindRelease:
		s := "Release of " + orUnknown(e.Resource, "a resource")
		if who != "" {
			s += " to " + who
		}
		return s
	case adminapi.KindAttest:
		if who == "" {
			return "Attestation"
		}
		return "Attestation of " + who
	default:
		return fmt.Sprintf("Event %q", e.Kind)
	}
}

func verdictPhrase(e adminapi.AuditEntry) string {
	switch e.Verdict {
	case "allow":
		return "was ALLOWED"
	case "deny":
		return "was DENIED"
	case "rejected":
		return "was REJECTED before appraisal"
	case "none":
		return "was appraised with no trust claims (NONE)"
	case "":
		return "has no recorded verdict"
	default:
		return "was appraised " + strings.ToUpper(e.Verdict)
	}
}

// failed reports whether the entry is anything short of a clean success, in
// which case the explanation lists what went wrong claim by claim.
func failed(e adminapi.AuditEntry) bool {
	return e.Verdict != "allow" && e.Verdict != "affirming"
}

// trustSentence summarizes the trust vector: its overall tier (the worst
// claim's, as EAR's status is) and, when something failed, every claim that
// is not affirming with the AR4SI meaning of its value.
func trustSentence(tv map[string]int, failed bool) string {
	if len(tv) == 0 {
		return ""
	}
	worst := ear.TrustTierNone
	var bad []string
	for _, name := range orderedClaims(tv) {
		v := tv[name]
		tier := tierOf(v)
		if tier > worst {
			worst = tier
		}
		// 0 is "no claim" and AR4SI says to treat it as absent.
		if v != 0 && tier != ear.TrustTierAffirming {
			text := fmt.Sprintf("%s = %d", name, v)
			if meaning := claimMeaning(name, v); meaning != "" {
				text += " (" + meaning + ")"
			}
			bad = append(bad, text)
		}
	}
	if worst == ear.TrustTierNone && len(bad) == 0 {
		return "The attestation made no trust claims."
	}
	s := "The attestation was " + worst.String()
	if !failed {
		return s + "."
	}
	if len(bad) == 0 {
		return s + ": every trust claim is affirming."
	}
	return s + ": " + strings.Join(bad, "; ") + "."
}

func orderedClaims(tv map[string]int) []string {
	var names []string
	for _, g := range trustGroups {
		if _, ok := tv[g.name]; ok {
			names = append(names, g.name)
		}
	}
	var extra []string
	for name := range tv {
		if !slices.Contains(names, name) {
			extra = append(extra, name)
		}
	}
	slices.Sort(extra)
	return append(names, extra...)
}

// tierOf maps a claim value to its AR4SI tier; values outside the int8
// range the draft allows are treated as contraindicated.
func tierOf(v int) ear.TrustTier {
	if v < -128 || v > 127 {
		return ear.TrustTierContraindicated
	}
	return ear.TrustClaim(v).GetTier()
}

// claimMeaning returns ear's short AR4SI description of value v for trust
// claim group. ear keeps these per-group texts unexported and renders them
// only through TrustVector.Report, so the one relevant line is taken from
// there rather than duplicating the registry's wording here.
func claimMeaning(group string, v int) string {
	i := slices.IndexFunc(trustGroups, func(g struct{ name, label string }) bool { return g.name == group })
	if i < 0 || v < -128 || v > 127 {
		return ""
	}
	tv, err := ear.ToTrustVector(map[string]any{group: v})
	if err != nil || tv == nil {
		return ""
	}
	prefix := trustGroups[i].label + " ["
	for line := range strings.SplitSeq(tv.Report(true, false), "\n") {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			if _, meaning, ok := strings.Cut(rest, "]: "); ok && !strings.HasPrefix(meaning, "unknown code-point") {
				return meaning
			}
		}
	}
	return ""
}

// findingsSentence lists the failed reference-value comparisons; when the
// decision succeeded it only counts the comparisons.
func findingsSentence(fs []adminapi.Finding, failed bool) string {
	var bad []string
	for _, f := range fs {
		if !f.OK {
			bad = append(bad, findingText(f))
		}
	}
	if !failed || len(bad) == 0 {
		return ""
	}
	return strings.Join(bad, "; ") + "."
}

func findingText(f adminapi.Finding) string {
	var s string
	switch ref := f.Reference.(type) {
	case nil:
		if f.ReferenceCount > 0 {
			s = fmt.Sprintf("%s %s is not among the %d values of reference value %q", f.Claim, jsonText(f.Value), f.ReferenceCount, f.ReferenceName)
			if f.Value == nil {
				s = fmt.Sprintf("%s is missing from the evidence (%d reference values %q)", f.Claim, f.ReferenceCount, f.ReferenceName)
			}
			break
		}
		if f.Value == nil {
			s = f.Claim + " failed"
		} else {
			s = fmt.Sprintf("%s %s has no reference value", f.Claim, jsonText(f.Value))
		}
	default:
		if f.Value == nil {
			s = fmt.Sprintf("%s is missing from the evidence (reference %s)", f.Claim, jsonText(ref))
		} else if strings.HasPrefix(jsonText(ref), "[") {
			s = fmt.Sprintf("%s %s is not among the reference values %s", f.Claim, jsonText(f.Value), jsonText(ref))
		} else {
			s = fmt.Sprintf("%s %s does not match the reference value %s", f.Claim, jsonText(f.Value), jsonText(ref))
		}
	}
	// The KBS's own message wins when it already names the claim; a terse
	// one is added to the generated text.
	if msg := strings.TrimSuffix(f.Message, "."); msg != "" {
		if strings.Contains(msg, f.Claim) {
			return msg
		}
		s += " (" + msg + ")"
	}
	return s
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// shortID keeps enough of a session id to find it in logs.
func shortID(id string) string {
	if len(id) <= 12 {
		return id
	}
	return id[:8] + "..."
}

func orUnknown(s, fallback string) string {
	if s == "" {
		return fallback
	}
	return s
}
