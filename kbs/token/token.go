// Package token issues and verifies the KBS's attestation tokens: EAR
// (draft-ietf-rats-ear) JWTs signed ES256 by a key the KBS keeps in its data
// directory. The token carries the appraisal of one submodule ("cpu0") and,
// in its annotated evidence, the TEE public key, so a Bearer request can be
// served without the session that produced the token.
package token

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/veraison/ear"

	"github.com/cloak-containers/cloak/kbs/keyfile"
)

// Token constants.
const (
	Issuer     = "cloak-kbs"
	Submod     = "cpu0"
	DefaultTTL = 5 * time.Minute
	// MaxTokenSize bounds the token text accepted by Verify.
	MaxTokenSize = 64 << 10
	// ClockSkew tolerated on iat and exp.
	ClockSkew = 30 * time.Second
)

// Keys of the annotated evidence that are not the TEE's own claims.
const (
	ClaimInitData          = "init_data"
	ClaimInitDataClaims    = "init_data_claims"
	ClaimRuntimeData       = "runtime_data_claims"
	ClaimTeePubKey         = "tee-pubkey"
	ClaimAnnotatedEvidence = "ear.veraison.annotated-evidence"
)

// Checks reported by Error.
const (
	CheckMalformed = "token"
	CheckSignature = "token-signature"
	CheckExpired   = "token-expired"
	CheckIssuedAt  = "token-iat"
	CheckIssuer    = "token-issuer"
	CheckTeePubKey = "token-tee-pubkey"
)

// Error reports why a token was refused.
type Error struct {
	Check string
	Err   error
}

func (e *Error) Error() string {
	return "attestation token refused (" + e.Check + "): " + e.Err.Error()
}
func (e *Error) Unwrap() error { return e.Err }

// Appraisal is what the KBS decided about one piece of evidence.
type Appraisal struct {
	Status      string         // affirming | warning | contraindicated | none
	TrustVector map[string]int // EAR claim names, e.g. "executables"
	PolicyID    string
	// Annotated is the annotated evidence: {"<tee>": claims, "init_data": hex,
	// "init_data_claims": {...}, "runtime_data_claims": {"tee-pubkey": JWK, "nonce": ...}}.
	Annotated map[string]any
	// PolicyClaims go to "ear.veraison.policy-claims": Cloak puts the
	// appraisal's findings there, so whoever holds the token (a release
	// decision, an auditor) can see claim by claim why it was appraised so.
	PolicyClaims map[string]any
}

// Signer issues and verifies tokens.
type Signer struct {
	key *ecdsa.PrivateKey
	ttl time.Duration
	now func() time.Time
}

// NewSigner returns a signer; ttl <= 0 means DefaultTTL, nil now means time.Now.
func NewSigner(key *ecdsa.PrivateKey, ttl time.Duration, now func() time.Time) *Signer {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if now == nil {
		now = time.Now
	}
	return &Signer{key: key, ttl: ttl, now: now}
}

// Issue signs an EAR token for an appraisal. It returns the token and its
// claims as the resource policy will see them.
func (s *Signer) Issue(a Appraisal) (string, map[string]any, error) {
	ar := ear.NewAttestationResult(Submod, "cloak-kbs", "cloak")
	profile := ear.EatTrusteeProfile
	ar.Profile = &profile
	now := s.now()
	iat := now.Unix()
	ar.IssuedAt = &iat
	sub := ar.Submods[Submod]
	tier, err := ear.ToTrustTier(a.Status)
	if err != nil {
		return "", nil, fmt.Errorf("appraisal status %q: %w", a.Status, err)
	}
	sub.Status = tier
	tv := map[string]any{}
	for k, v := range a.TrustVector {
		tv[k] = v
	}
	vec, err := ear.ToTrustVector(tv)
	if err != nil {
		return "", nil, fmt.Errorf("trust vector %v: %w", a.TrustVector, err)
	}
	sub.TrustVector = vec
	if a.PolicyID != "" {
		sub.AppraisalPolicyID = &a.PolicyID
	}
	annotated := a.Annotated
	sub.VeraisonAnnotatedEvidence = &annotated
	if len(a.PolicyClaims) > 0 {
		pc := a.PolicyClaims
		sub.VeraisonPolicyClaims = &pc
	}
	// MarshalJSON validates the result; the claims map is its JSON form so the
	// resource policy sees exactly what a Bearer client would send back.
	payload, err := ar.MarshalJSON()
	if err != nil {
		return "", nil, fmt.Errorf("build EAR: %w", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", nil, fmt.Errorf("decode EAR: %w", err)
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", nil, fmt.Errorf("token id: %w", err)
	}
	claims["iss"] = Issuer
	claims["exp"] = now.Add(s.ttl).Unix()
	claims["jti"] = hex.EncodeToString(jti)
	tok := jwt.New()
	for k, v := range claims {
		if err := tok.Set(k, v); err != nil {
			return "", nil, fmt.Errorf("set claim %s: %w", k, err)
		}
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.ES256(), s.key))
	if err != nil {
		return "", nil, fmt.Errorf("sign EAR: %w", err)
	}
	// Round-trip through JSON so numbers look as they will after Verify.
	claims, err = payloadClaims(string(signed))
	if err != nil {
		return "", nil, err
	}
	return string(signed), claims, nil
}

// Verified is an accepted token.
type Verified struct {
	Claims    map[string]any // JSON-decoded payload
	Tee       string
	TeePubKey json.RawMessage
	Expires   time.Time
}

// Verify checks a token's signature against this signer's key, its issuer,
// that it has not expired and was not issued in the future, and extracts the
// TEE public key from the annotated evidence.
func (s *Signer) Verify(token string) (*Verified, error) {
	if len(token) > MaxTokenSize {
		return nil, &Error{CheckMalformed, fmt.Errorf("token is %d bytes, limit is %d", len(token), MaxTokenSize)}
	}
	// Parse without verifying first, so that garbage is reported as such
	// rather than as a signature failure.
	if _, err := jwt.ParseInsecure([]byte(token)); err != nil {
		return nil, &Error{CheckMalformed, fmt.Errorf("not a JWT: %w", err)}
	}
	parsed, err := jwt.Parse([]byte(token),
		jwt.WithKey(jwa.ES256(), &s.key.PublicKey),
		jwt.WithValidate(true),
		jwt.WithIssuer(Issuer),
		jwt.WithRequiredClaim(jwt.ExpirationKey),
		jwt.WithRequiredClaim(jwt.IssuedAtKey),
		jwt.WithClock(jwt.ClockFunc(s.now)),
		jwt.WithAcceptableSkew(ClockSkew),
	)
	if err != nil {
		return nil, classify(err)
	}
	exp, _ := parsed.Expiration()
	claims, err := payloadClaims(token)
	if err != nil {
		return nil, &Error{CheckMalformed, err}
	}
	tee, pub, err := teeKey(claims)
	if err != nil {
		return nil, &Error{CheckTeePubKey, err}
	}
	return &Verified{Claims: claims, Tee: tee, TeePubKey: pub, Expires: exp}, nil
}

func classify(err error) error {
	switch {
	case errors.Is(err, jwt.TokenExpiredError()):
		return &Error{CheckExpired, fmt.Errorf("token has expired; attest again: %w", err)}
	case errors.Is(err, jwt.InvalidIssuedAtError()):
		return &Error{CheckIssuedAt, fmt.Errorf("token issued in the future: %w", err)}
	case errors.Is(err, jwt.InvalidIssuerError()):
		return &Error{CheckIssuer, fmt.Errorf("token not issued by %s: %w", Issuer, err)}
	case errors.Is(err, jwt.ValidateError()):
		return &Error{CheckMalformed, err}
	case errors.Is(err, jws.VerifyError()):
		return &Error{CheckSignature, fmt.Errorf("signature does not verify with this KBS's key: %w", err)}
	default:
		return &Error{CheckMalformed, err}
	}
}

func payloadClaims(token string) (map[string]any, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("token is not a compact JWS")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("token payload is not base64url: %w", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(raw, &claims); err != nil {
		return nil, fmt.Errorf("token payload is not a JSON object: %w", err)
	}
	return claims, nil
}

// teeKey finds the TEE name and tee-pubkey in submods.cpu0's annotated evidence.
func teeKey(claims map[string]any) (string, json.RawMessage, error) {
	submods, _ := claims["submods"].(map[string]any)
	sub, _ := submods[Submod].(map[string]any)
	annotated, _ := sub[ClaimAnnotatedEvidence].(map[string]any)
	if annotated == nil {
		return "", nil, fmt.Errorf("token has no submods.%s.%s", Submod, ClaimAnnotatedEvidence)
	}
	rt, _ := annotated[ClaimRuntimeData].(map[string]any)
	jwk, ok := rt[ClaimTeePubKey].(map[string]any)
	if !ok {
		return "", nil, fmt.Errorf("token has no %s.%s object", ClaimRuntimeData, ClaimTeePubKey)
	}
	pub, err := json.Marshal(jwk)
	if err != nil {
		return "", nil, fmt.Errorf("encode tee-pubkey: %w", err)
	}
	var tee string
	for k := range annotated {
		switch k {
		case ClaimInitData, ClaimInitDataClaims, ClaimRuntimeData:
		default:
			tee = k
		}
	}
	return tee, pub, nil
}

// LoadOrCreateKey reads the PEM (PKCS#8) P-256 signing key at path, creating
// it on first start so tokens stay valid across restarts.
func LoadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := keyfile.LoadOrCreate(path, func() ([]byte, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate token signing key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encode token signing key: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	})
	if err != nil {
		return nil, fmt.Errorf("token signing key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("token signing key %s: not a PEM PRIVATE KEY; delete it to generate a new one (outstanding tokens become invalid)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("token signing key %s: %w", path, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("token signing key %s: want an EC P-256 key, got %T", path, k)
	}
	return ec, nil
}
