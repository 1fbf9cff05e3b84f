package server

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/adminauth"
	"github.com/cloak-containers/cloak/kbs/store"
	"github.com/cloak-containers/cloak/measurements/bundle"
	"github.com/cloak-containers/cloak/policy"
)

// checkReferenceValue names a reference value refused by name or value.
const checkReferenceValue = "reference-value"

const (
	// An imported image build brings one SNP measurement per CPU model and
	// vCPU count (769 for Cloak's image): room for a few builds per name.
	maxImportedValues = 4096
	defaultAuditLimit = 100
	maxAuditLimit     = 1000
)

// adminOnly authenticates an admin request. need is the least role allowed:
// RoleAuditor routes accept both roles, RoleAdmin routes only admins. The
// role is the one of the key that signed the token (adminauth), so an
// auditor key is refused on write routes whatever its token claims.
// Without configured keys every admin route answers 403: the API is off,
// which is a matter of configuration, not of credentials.
func (s *Server) adminOnly(need string, h handlerFunc) http.Handler {
	return s.wrap(func(w http.ResponseWriter, r *http.Request) error {
		if s.admin.Len() == 0 {
			return fail(http.StatusForbidden, checkAdminDisabled, "admin API disabled: start kbs with --admin-public-key (or --auditor-public-key)")
		}
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		id, err := s.admin.Verify(strings.TrimSpace(tok))
		if err != nil {
			var ae *adminauth.Error
			switch {
			case errors.As(err, &ae) && ae.Check == adminauth.CheckRole:
				return fail(http.StatusForbidden, ae.Check, "%s", ae.Detail)
			case errors.As(err, &ae):
				return fail(http.StatusUnauthorized, ae.Check, "%s", ae.Detail)
			}
			return err
		}
		if need == adminapi.RoleAdmin && id.Role != adminapi.RoleAdmin {
			if id.KeyRole == adminapi.RoleAuditor {
				return fail(http.StatusForbidden, checkAdminRole, "%s %s needs the admin role, and the token is signed by an auditor key (%s), which may only read; use a key given to kbs as --admin-public-key", r.Method, r.URL.Path, id.Fingerprint)
			}
			return fail(http.StatusForbidden, checkAdminRole, "%s %s needs the admin role, and the token narrows its admin key to role %q; send a token without a role claim or with role \"admin\"", r.Method, r.URL.Path, id.Role)
		}
		return h(w, r.WithContext(context.WithValue(r.Context(), keyAdminIdentity, id)))
	})
}

func adminResourcePath(r *http.Request) (kbstypes.ResourcePath, error) {
	p, err := kbstypes.ParseResourcePath(r.PathValue("path"))
	if err != nil {
		return p, fail(http.StatusBadRequest, checkResourcePath, "%v", err)
	}
	return p, nil
}

func (s *Server) handlePutResource(w http.ResponseWriter, r *http.Request) error {
	p, err := adminResourcePath(r)
	if err != nil {
		return err
	}
	value, err := io.ReadAll(io.LimitReader(r.Body, kbstypes.MaxResourceSize+1))
	if err != nil {
		return bodyError(err)
	}
	if len(value) > kbstypes.MaxResourceSize {
		return fail(http.StatusRequestEntityTooLarge, checkBodyTooLarge, "resource value larger than %d bytes", kbstypes.MaxResourceSize)
	}
	info, err := s.store.PutResource(p, value, s.now())
	if err != nil {
		return err
	}
	s.auditAdmin(r, adminapi.ActionResourceSet, p.String(), value)
	writeJSON(w, http.StatusOK, info)
	return nil
}

func (s *Server) handleDeleteResource(w http.ResponseWriter, r *http.Request) error {
	p, err := adminResourcePath(r)
	if err != nil {
		return err
	}
	if err := s.store.DeleteResource(p); errors.Is(err, store.ErrNotFound) {
		return fail(http.StatusNotFound, checkUnknownRes, "resource %s does not exist", p)
	} else if err != nil {
		return err
	}
	s.auditAdmin(r, adminapi.ActionResourceDelete, p.String(), nil)
	// 200, not 204: Trustee's kbs-client (delete_resource) accepts only 200.
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) handleAdminGetResource(w http.ResponseWriter, r *http.Request) error {
	p, err := adminResourcePath(r)
	if err != nil {
		return err
	}
	value, err := s.store.GetResource(p)
	if errors.Is(err, store.ErrNotFound) {
		return fail(http.StatusNotFound, checkUnknownRes, "resource %s does not exist", p)
	} else if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(value)
	return nil
}

func (s *Server) handleListResources(w http.ResponseWriter, _ *http.Request) error {
	list, err := s.store.ListResources()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, adminapi.ResourceList{Resources: list})
	return nil
}

// decodePolicy reads a PolicyBody and decodes its base64 source, accepting
// Trustee's unpadded base64url as well as padded and standard base64.
func decodePolicy(r *http.Request) (adminapi.PolicyBody, []byte, error) {
	var body adminapi.PolicyBody
	if err := decodeJSON(r, &body); err != nil {
		return body, nil, err
	}
	if body.Type != "" && body.Type != "rego" {
		return body, nil, fail(http.StatusBadRequest, checkBody, "policy type %q not supported (want \"rego\")", body.Type)
	}
	if body.Policy == "" {
		return body, nil, fail(http.StatusBadRequest, checkBody, `request body field "policy" is missing`)
	}
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if src, err := enc.DecodeString(body.Policy); err == nil {
			return body, src, nil
		}
	}
	return body, nil, fail(http.StatusBadRequest, checkBody, `request body field "policy" is not base64 (base64url without padding, as Trustee sends it)`)
}

func (s *Server) handleSetResourcePolicy(w http.ResponseWriter, r *http.Request) error {
	_, src, err := decodePolicy(r)
	if err != nil {
		return err
	}
	rp, err := policy.CompileResource(src)
	if err != nil {
		return fail(http.StatusBadRequest, checkResourcePol, "resource policy rejected: %v", err)
	}
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	if err := s.store.PutPolicy(storedResourcePolicy, src); err != nil {
		return err
	}
	s.mu.Lock()
	s.resource, s.resourceRaw = rp, src
	s.mu.Unlock()
	s.auditAdmin(r, adminapi.ActionResourcePolicySet, "resource-policy", src)
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) handleGetResourcePolicy(w http.ResponseWriter, _ *http.Request) error {
	src, err := s.store.GetPolicy(storedResourcePolicy)
	if errors.Is(err, store.ErrNotFound) {
		src = policy.DefaultResourceSource()
	} else if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, adminapi.PolicyBody{Type: "rego", Policy: base64.RawURLEncoding.EncodeToString(src)})
	return nil
}

func (s *Server) handleSetAttestationPolicy(w http.ResponseWriter, r *http.Request) error {
	body, src, err := decodePolicy(r)
	if err != nil {
		return err
	}
	id := body.PolicyID
	if id == "" {
		id = "default"
	}
	ap, err := policy.CompileAttestation(id, src)
	if err != nil {
		return fail(http.StatusBadRequest, checkAttestPolicy, "attestation policy rejected: %v", err)
	}
	raw, err := json.Marshal(storedPolicy{ID: id, Source: src})
	if err != nil {
		return err
	}
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	if err := s.store.PutPolicy(storedAttestationPolicy, raw); err != nil {
		return err
	}
	s.mu.Lock()
	s.attestation, s.attestationRaw = ap, raw
	s.mu.Unlock()
	s.auditAdmin(r, adminapi.ActionAttestationPolicySet, id, src)
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) handleGetAttestationPolicy(w http.ResponseWriter, _ *http.Request) error {
	sp := storedPolicy{ID: "default", Source: policy.DefaultAttestationSource()}
	raw, err := s.store.GetPolicy(storedAttestationPolicy)
	if err == nil {
		err = json.Unmarshal(raw, &sp)
	} else if errors.Is(err, store.ErrNotFound) {
		err = nil
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, adminapi.PolicyBody{Type: "rego", PolicyID: sp.ID, Policy: base64.RawURLEncoding.EncodeToString(sp.Source)})
	return nil
}

func (s *Server) handleSetReferenceValue(w http.ResponseWriter, r *http.Request) error {
	var rv adminapi.ReferenceValue
	if err := decodeJSON(r, &rv); err != nil {
		return err
	}
	if err := adminapi.CheckReferenceValues(rv); err != nil {
		return fail(http.StatusBadRequest, checkReferenceValue, "%v", err)
	}
	if err := s.setReferenceValue(r, rv); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// setReferenceValue stores a checked, non-empty reference value and audits
// the change (CheckReferenceValues refuses an empty list: deleting is
// handleDeleteReferenceValue's, which audits it).
func (s *Server) setReferenceValue(r *http.Request, rv adminapi.ReferenceValue) error {
	if err := s.store.SetReferenceValue(rv.Name, rv.Values); err != nil {
		return err
	}
	values, err := json.Marshal(rv.Values)
	if err != nil {
		return err
	}
	s.auditAdmin(r, adminapi.ActionReferenceValueSet, rv.Name, values)
	return nil
}

// handleSetTrusteeReferenceValue serves Trustee's kbs-client
// set-sample-reference-value: each name of the message is set as
// handleSetReferenceValue would, after all of them passed the check.
func (s *Server) handleSetTrusteeReferenceValue(w http.ResponseWriter, r *http.Request) error {
	if err := requireJSON(r); err != nil {
		return err
	}
	body, err := io.ReadAll(r.Body) // bounded by MaxBodyBytes
	if err != nil {
		return bodyError(err)
	}
	rvs, err := adminapi.ParseTrusteeReferenceValues(body)
	if err != nil {
		return fail(http.StatusBadRequest, checkReferenceValue, "%v", err)
	}
	for _, rv := range rvs {
		if err := s.setReferenceValue(r, rv); err != nil {
			return err
		}
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// handleGetTrusteeReferenceValue answers Trustee's kbs-client
// get-reference-value: the values of one name, a JSON list.
func (s *Server) handleGetTrusteeReferenceValue(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	all, err := s.store.ReferenceValues()
	if err != nil {
		return err
	}
	values, ok := all[name]
	if !ok {
		return fail(http.StatusNotFound, checkReferenceValue, "reference value %q is not set", name)
	}
	writeJSON(w, http.StatusOK, values)
	return nil
}

func (s *Server) handleDeleteReferenceValue(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	all, err := s.store.ReferenceValues()
	if err != nil {
		return err
	}
	if _, ok := all[name]; !ok {
		return fail(http.StatusNotFound, checkReferenceValue, "reference value %q is not set", name)
	}
	if err := s.store.SetReferenceValue(name, nil); err != nil {
		return err
	}
	s.auditAdmin(r, adminapi.ActionReferenceValueDelete, name, nil)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) handleGetReferenceValues(w http.ResponseWriter, _ *http.Request) error {
	rv, err := s.store.ReferenceValues()
	if err != nil {
		return err
	}
	src, err := s.store.ReferenceSources()
	if err != nil {
		return err
	}
	if len(src) == 0 {
		src = nil
	}
	writeJSON(w, http.StatusOK, adminapi.ReferenceValues{ReferenceValues: rv, Sources: src})
	return nil
}

// handleImportReferenceValues verifies a signed bundle
// (measurements/bundle) against the configured signers and stores all of its
// values, each remembering the bundle and signer; any failure stores nothing.
func (s *Server) handleImportReferenceValues(w http.ResponseWriter, r *http.Request) error {
	if len(s.cfg.ReferenceValueSigners) == 0 {
		return fail(http.StatusForbidden, checkBundleSigner, "no reference-value signer is trusted: start kbs with --reference-value-signer PUB.pem")
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, bundle.MaxSize+1))
	if err != nil {
		return bodyError(err)
	}
	v, err := bundle.Verify(data, s.cfg.ReferenceValueSigners)
	switch {
	case errors.Is(err, bundle.ErrTooLarge):
		return fail(http.StatusRequestEntityTooLarge, checkBodyTooLarge, "%v", err)
	case errors.Is(err, bundle.ErrUntrustedSigner):
		return fail(http.StatusForbidden, checkBundleSigner, "%v", err)
	case err != nil:
		return fail(http.StatusBadRequest, checkBundle, "%v", err)
	}
	values := map[string][]string{}
	for _, rv := range v.Document.Values {
		err := adminapi.CheckReferenceName(rv.Name, false)
		if err == nil {
			err = adminapi.CheckReferenceValue(rv.Name, len(values[rv.Name]), rv.Value)
		}
		if err != nil {
			return fail(http.StatusBadRequest, checkBundle, "bundle %s not imported: %v", v.ID, err)
		}
		values[rv.Name] = append(values[rv.Name], rv.Value)
	}
	src := adminapi.ReferenceValueSource{Bundle: v.ID, BundleName: v.Document.Name, Signer: v.Signer, Imported: s.now().UTC()}
	added, err := s.store.ImportReferenceValues(values, src, maxImportedValues)
	if errors.Is(err, store.ErrTooManyValues) {
		return fail(http.StatusBadRequest, checkBundle, "bundle %s not imported: %v", v.ID, err)
	} else if err != nil {
		return err
	}
	res := adminapi.ImportResult{ReferenceValueSource: src}
	for _, rv := range v.Document.Values {
		res.Values = append(res.Values, adminapi.ImportedValue{Name: rv.Name, Value: rv.Value, New: added[rv.Name][rv.Value]})
	}
	s.auditAdmin(r, adminapi.ActionReferenceImport, v.ID, data)
	s.log.Info("reference values imported", "bundle", v.ID, "bundle_name", v.Document.Name, "signer", v.Signer, "values", len(res.Values))
	writeJSON(w, http.StatusOK, res)
	return nil
}

// withSources returns findings with the bundle of each matched reference
// value that was imported from one and, for a claim that matched none, the
// bundles of the values it was compared with, for the audit record.
func (s *Server) withSources(findings []adminapi.Finding) []adminapi.Finding {
	out := slices.Clone(findings)
	for i, f := range out {
		if f.ReferenceName == "" {
			continue
		}
		if !f.OK {
			b, err := s.store.ReferenceBundles(f.ReferenceName)
			if err != nil {
				s.log.Warn("reference bundles lookup failed", "name", f.ReferenceName, "err", err)
			}
			if len(b) > 0 {
				out[i].ReferenceBundles = b
			}
			continue
		}
		v, ok := f.Value.(string)
		if !ok {
			continue
		}
		src, err := s.store.ReferenceSource(f.ReferenceName, v)
		if err != nil {
			s.log.Warn("reference source lookup failed", "name", f.ReferenceName, "err", err)
			continue
		}
		out[i].Source = src
	}
	return out
}

// auditAdmin records a change made through the admin API by the key that
// signed r. value is the new value, of which only its digest is kept (none
// for a deletion): the audit log is readable by auditors, values are not.
func (s *Server) auditAdmin(r *http.Request, action, target string, value []byte) {
	id, _ := r.Context().Value(keyAdminIdentity).(adminauth.Identity)
	e := adminapi.AuditEntry{
		Kind: adminapi.KindAdmin, Verdict: adminapi.VerdictApplied, RemoteAddr: r.RemoteAddr,
		Key: id.Fingerprint, Role: id.Role, Action: action, Target: target,
	}
	if value != nil {
		sum := sha256.Sum256(value)
		e.Digest = "sha256:" + hex.EncodeToString(sum[:])
	}
	s.audit(r.Context(), e)
}

func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	kind := q.Get("kind")
	switch kind {
	case "", adminapi.KindAttest, adminapi.KindRelease, adminapi.KindAdmin:
	default:
		return fail(http.StatusBadRequest, checkBody, "query parameter kind=%q: want %s, %s or %s", kind, adminapi.KindAttest, adminapi.KindRelease, adminapi.KindAdmin)
	}
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return fail(http.StatusBadRequest, checkBody, "query parameter after=%q is not a sequence number", v)
		}
		after = n
	}
	limit := defaultAuditLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxAuditLimit {
			return fail(http.StatusBadRequest, checkBody, "query parameter limit=%q must be 1-%d", v, maxAuditLimit)
		}
		limit = n
	}
	entries, next, err := s.store.Audit(after, limit, kind)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, adminapi.AuditPage{Entries: entries, Next: next})
	return nil
}
