package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/initdata"
	"github.com/cloak-containers/cloak/kbs/jwe"
	"github.com/cloak-containers/cloak/kbs/session"
	"github.com/cloak-containers/cloak/kbs/store"
	"github.com/cloak-containers/cloak/kbs/token"
	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/policy"
)

// checkVersionCompatible accepts protocol versions 0.1.0 up to 0.4.x: their
// auth/attest/resource bodies are the ones this server speaks (later fields
// are optional). Other minors and majors are refused so that an incompatible
// client fails at the first request with a clear message.
func checkVersionCompatible(v string) error {
	parts := strings.Split(v, ".")
	bad := fail(http.StatusBadRequest, checkVersion,
		"protocol version %q not supported: this KBS speaks %s (accepts 0.1.0 to 0.4.x)", v, kbstypes.ProtocolVersion)
	if len(parts) != 3 || parts[0] != "0" {
		return bad
	}
	nums := make([]int, 3)
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || strconv.Itoa(n) != p {
			return bad
		}
		nums[i] = n
	}
	if nums[1] < 1 || nums[1] > 4 {
		return bad
	}
	return nil
}

func (s *Server) handleAuth(w http.ResponseWriter, r *http.Request) error {
	// extra-params is reserved and ignored, whatever JSON value it holds.
	var req kbstypes.Request
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if err := checkVersionCompatible(req.Version); err != nil {
		return err
	}
	if req.Tee == "" {
		return fail(http.StatusBadRequest, checkBody, `request body field "tee" is missing; name the TEE, e.g. "sample" or "snp"`)
	}
	if _, err := s.verifiers.Lookup(req.Tee); err != nil {
		return fail(http.StatusBadRequest, verifier.CheckTee, "%v", err)
	}
	sess, err := s.sessions.Create(req.Tee)
	switch {
	case errors.Is(err, session.ErrFull):
		w.Header().Set("Retry-After", "5")
		return fail(http.StatusServiceUnavailable, checkBusy, "%v", err)
	case err != nil:
		return err
	}
	http.SetCookie(w, &http.Cookie{
		Name:     kbstypes.SessionCookie,
		Value:    sess.ID,
		Path:     "/kbs/v0",
		Expires:  sess.Expires,
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteStrictMode,
	})
	writeJSON(w, http.StatusOK, kbstypes.Challenge{Nonce: sess.Nonce, ExtraParams: ""})
	return nil
}

// sessionError maps session lookup failures to 401s naming the check.
func sessionError(err error) error {
	switch {
	case errors.Is(err, session.ErrExpired):
		return fail(http.StatusUnauthorized, checkSessionExp, "session expired; start again with POST /kbs/v0/auth")
	case errors.Is(err, session.ErrNotFound):
		return fail(http.StatusUnauthorized, checkSession, "unknown session; start with POST /kbs/v0/auth")
	case errors.Is(err, session.ErrNonceUsed):
		return fail(http.StatusUnauthorized, checkNonceUsed, "this session's nonce was already used for an attestation (replay); start again with POST /kbs/v0/auth")
	case errors.Is(err, session.ErrNotAttested):
		return fail(http.StatusUnauthorized, checkNotAttested, "session is not attested; POST /kbs/v0/attest first")
	}
	return err
}

func (s *Server) handleAttest(w http.ResponseWriter, r *http.Request) error {
	c, err := r.Cookie(kbstypes.SessionCookie)
	if err != nil {
		return s.rejectAttest(r, session.Session{}, fail(http.StatusUnauthorized, checkSession, "no %s cookie; start with POST /kbs/v0/auth", kbstypes.SessionCookie))
	}
	sess, err := s.sessions.Get(c.Value)
	if err != nil {
		return s.rejectAttest(r, session.Session{ID: c.Value}, sessionError(err))
	}
	var att kbstypes.Attestation
	if err := decodeJSON(r, &att); err != nil {
		return s.rejectAttest(r, sess, err)
	}
	switch {
	case att.RuntimeData.Nonce == "":
		return s.rejectAttest(r, sess, fail(http.StatusBadRequest, checkBody, `request body field "runtime-data.nonce" is missing`))
	case len(att.RuntimeData.TeePubKey) == 0:
		return s.rejectAttest(r, sess, fail(http.StatusBadRequest, checkBody, `request body field "runtime-data.tee-pubkey" is missing`))
	case len(att.TeeEvidence.PrimaryEvidence) == 0:
		return s.rejectAttest(r, sess, fail(http.StatusBadRequest, checkBody, `request body field "tee-evidence.primary_evidence" is missing`))
	}
	// From here on the nonce is spent, whatever the outcome.
	if _, err := s.sessions.ConsumeNonce(sess.ID); err != nil {
		return s.rejectAttest(r, sess, sessionError(err))
	}
	claims, annotated, err := s.verifyEvidence(r, sess, &att)
	if err != nil {
		return s.rejectAttest(r, sess, err)
	}
	ap, _ := s.policies()
	ref, err := s.store.ReferenceValues()
	if err != nil {
		return err
	}
	appraisal, err := ap.Appraise(r.Context(), policy.AppraisalInput{Tee: sess.Tee, Claims: claims, Reference: ref})
	if err != nil {
		return s.rejectAttest(r, sess, fail(http.StatusInternalServerError, checkAttestPolicy, "attestation policy %q failed: %v", ap.ID(), err))
	}
	tok, tokClaims, err := s.tokens.Issue(token.Appraisal{
		Status:       appraisal.Status,
		TrustVector:  appraisal.TrustVector,
		PolicyID:     appraisal.PolicyID,
		Annotated:    annotated,
		PolicyClaims: map[string]any{"findings": appraisal.Findings},
	})
	if err != nil {
		return err
	}
	tokenID, _ := tokClaims["jti"].(string)
	entry := adminapi.AuditEntry{
		Kind: adminapi.KindAttest, Session: auditSessionRef(sess.ID), TokenID: tokenID, Tee: sess.Tee, RemoteAddr: r.RemoteAddr,
		Verdict: appraisal.Status, Check: checkAttestPolicy, PolicyID: appraisal.PolicyID,
		TrustVector: appraisal.TrustVector, Findings: s.withSources(appraisal.Findings),
		Detail: "evidence verified and appraised",
	}
	if _, entry.Emulated = policy.Emulated(annotated); entry.Emulated {
		entry.Detail = "emulated evidence verified and appraised; it carries no hardware protection"
	}
	// Recorded before the session is marked: a token that no audit entry
	// names is never handed out or usable.
	if err := s.auditRequired(entry); err != nil {
		return fmt.Errorf("record attestation: %w", err)
	}
	if err := s.sessions.MarkAttested(sess.ID, tok, att.RuntimeData.TeePubKey, tokClaims); err != nil {
		return sessionError(err)
	}
	s.metrics.attestations.WithLabelValues(sess.Tee, appraisal.Status).Inc()
	writeJSON(w, http.StatusOK, kbstypes.AttestationToken{Token: tok})
	return nil
}

// verifyEvidence checks nonce, TEE key, init-data and evidence, and returns
// the attestation policy input and the token's annotated evidence.
func (s *Server) verifyEvidence(r *http.Request, sess session.Session, att *kbstypes.Attestation) (claims, annotated map[string]any, err error) {
	if subtle.ConstantTimeCompare([]byte(att.RuntimeData.Nonce), []byte(sess.Nonce)) != 1 {
		return nil, nil, fail(http.StatusUnauthorized, checkNonce, "runtime-data nonce does not match the session's nonce; use the nonce from this session's /kbs/v0/auth answer")
	}
	if _, err := jwe.ParseRecipient(att.RuntimeData.TeePubKey); err != nil {
		return nil, nil, fail(http.StatusBadRequest, checkTeePubKey, "%v", err)
	}
	var jwk map[string]any
	if err := json.Unmarshal(att.RuntimeData.TeePubKey, &jwk); err != nil {
		return nil, nil, fail(http.StatusBadRequest, checkTeePubKey, "tee-pubkey is not a JSON object: %v", err)
	}
	var digest []byte
	var initClaims map[string]any
	if att.InitData != nil {
		doc, err := initdata.Parse(att.InitData)
		if err != nil {
			return nil, nil, fail(http.StatusBadRequest, checkInitData, "%v", err)
		}
		digest, initClaims = doc.Digest, doc.Data
	}
	expected, err := kbstypes.RuntimeDataDigest(att.TeeEvidence.AdditionalEvidence, att.RuntimeData.Nonce, att.RuntimeData.TeePubKey)
	if err != nil {
		return nil, nil, fail(http.StatusBadRequest, checkTeePubKey, "cannot compute report data: %v", err)
	}
	v, err := s.verifiers.Lookup(sess.Tee)
	if err != nil {
		return nil, nil, fail(http.StatusBadRequest, verifier.CheckTee, "%v", err)
	}
	teeClaims, err := v.Verify(r.Context(), att.TeeEvidence.PrimaryEvidence, expected, digest)
	if err != nil {
		var ce *verifier.CheckError
		if errors.As(err, &ce) {
			return nil, nil, fail(http.StatusUnauthorized, ce.Check, "%s evidence refused: %v", sess.Tee, err)
		}
		return nil, nil, err
	}
	hexDigest := hex.EncodeToString(digest)
	var initAny any
	if initClaims != nil {
		initAny = initClaims
	}
	claims = map[string]any{sess.Tee: teeClaims, token.ClaimInitData: hexDigest, token.ClaimInitDataClaims: initAny}
	annotated = map[string]any{
		sess.Tee:                  teeClaims,
		token.ClaimInitData:       hexDigest,
		token.ClaimInitDataClaims: initAny,
		token.ClaimRuntimeData:    map[string]any{token.ClaimTeePubKey: jwk, "nonce": att.RuntimeData.Nonce},
	}
	return claims, annotated, nil
}

// rejectAttest audits and counts a refused attestation, then returns err.
// sess may be the zero Session when no live session was found.
func (s *Server) rejectAttest(r *http.Request, sess session.Session, err error) error {
	var ae *apiError
	check, detail := checkInternal, err.Error()
	if errors.As(err, &ae) {
		check = ae.check
	}
	tee := sess.Tee
	if tee == "" {
		tee = "unknown"
	}
	s.metrics.attestations.WithLabelValues(tee, "rejected").Inc()
	s.audit(r.Context(), adminapi.AuditEntry{
		Kind: adminapi.KindAttest, Session: auditSessionRef(sess.ID), Tee: sess.Tee, RemoteAddr: r.RemoteAddr,
		Verdict: "rejected", Check: check, Detail: detail,
	})
	return err
}

// requester is who asks for a resource: an attested session or a Bearer token.
type requester struct {
	session   string
	tee       string
	claims    map[string]any
	teePubKey json.RawMessage
}

func (s *Server) authenticate(r *http.Request) (*requester, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return nil, fail(http.StatusUnauthorized, token.CheckMalformed, "Authorization header must be \"Bearer <EAR token>\"")
		}
		v, err := s.tokens.Verify(strings.TrimSpace(tok))
		if err != nil {
			var te *token.Error
			if errors.As(err, &te) {
				return nil, fail(http.StatusUnauthorized, te.Check, "%v", err)
			}
			return nil, err
		}
		return &requester{tee: v.Tee, claims: v.Claims, teePubKey: v.TeePubKey}, nil
	}
	c, err := r.Cookie(kbstypes.SessionCookie)
	if err != nil {
		return nil, fail(http.StatusUnauthorized, checkSession, "no %s cookie and no Bearer token; attest first", kbstypes.SessionCookie)
	}
	sess, err := s.sessions.Attested(c.Value)
	if err != nil {
		return nil, sessionError(err)
	}
	return &requester{session: sess.ID, tee: sess.Tee, claims: sess.Claims, teePubKey: sess.TeePubKey}, nil
}

// handleGetResource releases a resource. The resource policy is evaluated
// before the store is consulted, so a requester the policy refuses learns
// nothing about which resources exist (403 for all); only an allowed
// requester can see 404.
func (s *Server) handleGetResource(w http.ResponseWriter, r *http.Request) error {
	who, err := s.authenticate(r)
	if err != nil {
		return err
	}
	p, err := kbstypes.ParseResourcePath(r.PathValue("path"))
	if err != nil {
		return fail(http.StatusBadRequest, checkResourcePath, "%v", err)
	}
	entry := adminapi.AuditEntry{
		Kind: adminapi.KindRelease, Session: auditSessionRef(who.session), Tee: who.tee, Resource: p.String(), RemoteAddr: r.RemoteAddr,
	}
	// The release record carries the appraisal it relied on, so a denial can
	// be explained claim by claim from this one entry.
	entry.TrustVector, entry.Findings = appraisalOf(who.claims)
	entry.TokenID, _ = who.claims["jti"].(string)
	entry.Emulated = emulatedToken(who.claims)
	release := func(verdict, check, rule, detail string) {
		entry.Verdict, entry.Check, entry.Rule, entry.Detail = verdict, check, rule, detail
		s.metrics.releases.WithLabelValues(who.tee, verdict).Inc()
		s.audit(r.Context(), entry)
	}
	_, rp := s.policies()
	d, err := rp.Decide(r.Context(), who.claims, p.String())
	if err != nil {
		return fail(http.StatusInternalServerError, checkResourcePol, "resource policy failed: %v", err)
	}
	if !d.Allow {
		reasons := strings.Join(d.Reasons, "; ")
		release("deny", checkResourcePol, d.Rule, reasons)
		return fail(http.StatusForbidden, checkResourcePol, "resource policy denied %s (%s): %s", p, d.Rule, reasons)
	}
	value, err := s.store.GetResource(p)
	if errors.Is(err, store.ErrNotFound) {
		release("deny", checkUnknownRes, d.Rule, "no such resource")
		return fail(http.StatusNotFound, checkUnknownRes, "resource %s does not exist", p)
	}
	if err != nil {
		return err
	}
	rcpt, err := jwe.ParseRecipient(who.teePubKey)
	if err != nil {
		return fail(http.StatusUnauthorized, checkTeePubKey, "%v", err)
	}
	sealed, err := rcpt.Seal(value)
	if err != nil {
		return err
	}
	entry.Verdict, entry.Check, entry.Rule, entry.Detail = "allow", checkResourcePol, d.Rule, "released"
	if err := s.auditRequired(entry); err != nil {
		return fmt.Errorf("record release: %w", err)
	}
	s.metrics.releases.WithLabelValues(who.tee, "allow").Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(sealed)
	return nil
}

// appraisalOf extracts the trust vector and findings from EAR token claims.
// The claims come from a token this KBS signed; anything unexpected in them
// is left out rather than failing the request.
// emulatedToken reports whether an attestation token's annotated evidence
// is from an emulated TEE.
func emulatedToken(claims map[string]any) bool {
	submods, _ := claims["submods"].(map[string]any)
	sub, _ := submods[token.Submod].(map[string]any)
	evidence, _ := sub["ear.veraison.annotated-evidence"].(map[string]any)
	_, emulated := policy.Emulated(evidence)
	return emulated
}

func appraisalOf(claims map[string]any) (map[string]int, []adminapi.Finding) {
	submods, _ := claims["submods"].(map[string]any)
	sub, _ := submods[token.Submod].(map[string]any)
	var tv map[string]int
	if raw, ok := sub["ear.trustworthiness-vector"].(map[string]any); ok {
		tv = make(map[string]int, len(raw))
		for k, v := range raw {
			if f, ok := v.(float64); ok {
				tv[k] = int(f)
			}
		}
	}
	var findings []adminapi.Finding
	if pc, ok := sub["ear.veraison.policy-claims"].(map[string]any); ok {
		var fast bool
		if findings, fast = findingsOf(pc["findings"]); !fast {
			findings = nil
			if b, err := json.Marshal(pc["findings"]); err == nil {
				_ = json.Unmarshal(b, &findings)
			}
		}
	}
	return tv, findings
}

// findingsOf converts the JSON-decoded findings of a token this KBS signed
// straight to their Go form; this runs on every release, and a JSON round
// trip of the findings cost more than the policy decision. ok is false when
// raw holds anything the direct conversion does not cover (a key or type
// that json.Unmarshal would treat differently); the caller then decodes it
// with encoding/json, so the result is the same either way.
func findingsOf(raw any) (findings []adminapi.Finding, ok bool) {
	if raw == nil {
		return nil, true
	}
	items, isList := raw.([]any)
	if !isList {
		return nil, false
	}
	findings = make([]adminapi.Finding, 0, len(items))
	for _, item := range items {
		m, isObject := item.(map[string]any)
		if !isObject {
			return nil, false
		}
		var f adminapi.Finding
		for k, v := range m {
			var isType bool
			switch k {
			case "claim":
				f.Claim, isType = v.(string)
			case "group":
				f.Group, isType = v.(string)
			case "message":
				f.Message, isType = v.(string)
			case "reference_name":
				f.ReferenceName, isType = v.(string)
			case "ok":
				f.OK, isType = v.(bool)
			case "value":
				f.Value, isType = v, true
			case "reference":
				f.Reference, isType = v, true
			case "reference_count":
				var n float64
				n, isType = v.(float64)
				isType = isType && n == math.Trunc(n) && math.Abs(n) < 1<<31
				f.ReferenceCount = int(n)
			}
			if !isType {
				return nil, false
			}
		}
		findings = append(findings, f)
	}
	return findings, true
}

// auditSessionRef is what the audit log records for a session: a digest of
// its id, never the id. The id is the session cookie, and auditors read the
// log; the digest still joins a release to its attestation.
func auditSessionRef(id string) string {
	if id == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}
