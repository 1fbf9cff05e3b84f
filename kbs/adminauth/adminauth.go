// Package adminauth authenticates KBS admin requests: an EdDSA (Ed25519) JWT
// with iat, exp and role claims, signed by one of the keys the KBS was
// started with. Tokens are short-lived by rule (at most MaxLifetime).
package adminauth

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cloak-containers/cloak/kbs/adminapi"
)

// Limits.
const (
	MaxLifetime  = time.Hour
	ClockSkew    = time.Minute
	MaxTokenSize = 8 << 10
)

// Check names reported in Error.
const (
	CheckMissing   = "admin-token-missing"
	CheckMalformed = "admin-token"
	CheckSignature = "admin-token-signature"
	CheckExpired   = "admin-token-expired"
	CheckClaims    = "admin-token-claims"
)

// Error says why an admin token was refused.
type Error struct {
	Check  string
	Detail string
}

func (e *Error) Error() string { return e.Detail }

// ErrMissing is returned when the request carries no token.
var ErrMissing = &Error{CheckMissing, "admin token missing: send Authorization: Bearer <JWT signed with an admin key>"}

// Verifier checks admin tokens against a set of public keys.
type Verifier struct {
	keys []ed25519.PublicKey
	now  func() time.Time
}

// NewVerifier returns a verifier; now nil means time.Now.
func NewVerifier(keys []ed25519.PublicKey, now func() time.Time) *Verifier {
	if now == nil {
		now = time.Now
	}
	return &Verifier{keys: keys, now: now}
}

type roleClaims struct {
	Role string `json:"role"`
}

// Verify returns the role of a valid token.
func (v *Verifier) Verify(token string) (string, error) {
	if token == "" {
		return "", ErrMissing
	}
	if len(token) > MaxTokenSize {
		return "", &Error{CheckMalformed, fmt.Sprintf("admin token is %d bytes, limit is %d", len(token), MaxTokenSize)}
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return "", &Error{CheckMalformed, fmt.Sprintf("admin token is not an EdDSA JWT: %v", err)}
	}
	var std jwt.Claims
	var rc roleClaims
	verified := false
	for _, k := range v.keys {
		if err := tok.Claims(k, &std, &rc); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return "", &Error{CheckSignature, "admin token is not signed by any configured --admin-public-key"}
	}
	if std.Expiry == nil || std.IssuedAt == nil {
		return "", &Error{CheckClaims, "admin token must carry both exp and iat claims"}
	}
	now := v.now()
	err = std.ValidateWithLeeway(jwt.Expected{Time: now}, ClockSkew)
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return "", &Error{CheckExpired, fmt.Sprintf("admin token expired at %s; create a new one", std.Expiry.Time().UTC().Format(time.RFC3339))}
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return "", &Error{CheckClaims, "admin token iat is in the future; check the clocks"}
	case err != nil:
		return "", &Error{CheckClaims, fmt.Sprintf("admin token claims invalid: %v", err)}
	}
	if life := std.Expiry.Time().Sub(std.IssuedAt.Time()); life > MaxLifetime {
		return "", &Error{CheckClaims, fmt.Sprintf("admin token lifetime %s exceeds the maximum %s; use a shorter exp", life, MaxLifetime)}
	}
	switch rc.Role {
	case adminapi.RoleAdmin, adminapi.RoleAuditor:
		return rc.Role, nil
	default:
		return "", &Error{CheckClaims, fmt.Sprintf("admin token role %q unknown (want %q or %q)", rc.Role, adminapi.RoleAdmin, adminapi.RoleAuditor)}
	}
}

// ParsePublicKey parses a PEM PKIX Ed25519 public key.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("not a PEM PUBLIC KEY")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	ed, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("admin key must be Ed25519, got %T", k)
	}
	return ed, nil
}
