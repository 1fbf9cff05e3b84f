// Package adminauth authenticates KBS admin requests: an EdDSA (Ed25519) JWT
// with iat and exp claims (and optionally role), signed by one of the keys
// the KBS was started with. Tokens are short-lived by rule (at most
// MaxLifetime).
//
// The key that verified a token decides its role: each configured key is an
// admin key or an auditor key. The token's role claim may only narrow that
// role (an admin key signing role "auditor"), never widen it, so a read-only
// auditor key cannot be turned into an admin by the client.
//
// The key set can be replaced while tokens are being verified (SetKeys; the
// kbs does it on SIGHUP): a verification uses the old set or the new one,
// never a mix.
package adminauth

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cloak-containers/cloak/api/adminapi"
)

// Limits.
const (
	// MaxLifetime (exp - iat) is the lifetime Trustee's kbs-client gave
	// its admin tokens, ADMIN_TOKEN_EXPIRY_SECS = 7200 in
	// tools/kbs-client/src/lib.rs (until e908c2d1), and still the one
	// Trustee's integration-tests/src/common.rs signs: a Trustee token must
	// administer a Cloak KBS. kbsctl's own tokens stay much shorter
	// (adminclient.TokenLifetime).
	MaxLifetime  = 2 * time.Hour
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
	// CheckRole: the token claims a role its key does not have. It is a
	// matter of authorization (403), not of authentication.
	CheckRole = "admin-role"
)

// Error says why an admin token was refused.
type Error struct {
	Check  string
	Detail string
}

func (e *Error) Error() string { return e.Detail }

// ErrMissing is returned when the request carries no token.
var ErrMissing = &Error{CheckMissing, "admin token missing: send Authorization: Bearer <JWT signed with an admin key>"}

// Key is a public key allowed to sign admin tokens and the role it grants:
// adminapi.RoleAdmin or adminapi.RoleAuditor.
type Key struct {
	Public ed25519.PublicKey
	Role   string
}

// Identity is who a verified token speaks for.
type Identity struct {
	Role        string // the effective role: the key's, or the narrower one the token claimed
	KeyRole     string // the role of the key that verified the token
	Fingerprint string // Fingerprint of that key
}

// Fingerprint names a public key in audit entries: the hex SHA-256 of its
// PKIX (SPKI) DER, the convention reference-value signers use too.
func Fingerprint(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		// An ed25519.PublicKey always marshals; a wrong length cannot verify anything.
		return "invalid-key"
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// Verifier checks admin tokens against a set of public keys. It is safe for
// concurrent use, SetKeys included.
type Verifier struct {
	keys atomic.Pointer[[]Key] // never nil after NewVerifier; the slice is never modified once stored
	now  func() time.Time
}

// NewVerifier returns a verifier; now nil means time.Now.
func NewVerifier(keys []Key, now func() time.Time) *Verifier {
	if now == nil {
		now = time.Now
	}
	v := &Verifier{now: now}
	v.SetKeys(keys)
	return v
}

// SetKeys replaces the key set and returns what changed: the keys of the
// new set that the old one did not have with that role, and the other way
// round. A key that moves from one role to the other is in both lists.
// Tokens verified from now on are checked against the new set; a
// verification already under way finishes with the set it started with.
func (v *Verifier) SetKeys(keys []Key) (added, removed []Key) {
	next := slices.Clone(keys)
	prev := v.keys.Swap(&next)
	if prev == nil {
		return next, nil
	}
	return missing(next, *prev), missing(*prev, next)
}

// missing returns the keys of a that b does not hold with the same role,
// each once.
func missing(a, b []Key) []Key {
	var out []Key
	for _, k := range a {
		if !holds(b, k) && !holds(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func holds(set []Key, k Key) bool {
	return slices.ContainsFunc(set, func(o Key) bool { return o.Role == k.Role && o.Public.Equal(k.Public) })
}

// Keys returns a copy of the current key set.
func (v *Verifier) Keys() []Key { return slices.Clone(*v.keys.Load()) }

// Len is the number of keys in the current set; 0 means no token can verify.
func (v *Verifier) Len() int { return len(*v.keys.Load()) }

type roleClaims struct {
	Role string `json:"role"`
}

// Verify returns the identity of a valid token.
func (v *Verifier) Verify(token string) (Identity, error) {
	if token == "" {
		return Identity{}, ErrMissing
	}
	if len(token) > MaxTokenSize {
		return Identity{}, &Error{CheckMalformed, fmt.Sprintf("admin token is %d bytes, limit is %d", len(token), MaxTokenSize)}
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return Identity{}, &Error{CheckMalformed, fmt.Sprintf("admin token is not an EdDSA JWT: %v", err)}
	}
	var std jwt.Claims
	var rc roleClaims
	var key *Key
	keys := *v.keys.Load()
	for i, k := range keys {
		if err := tok.Claims(k.Public, &std, &rc); err == nil {
			key = &keys[i]
			break
		}
	}
	if key == nil {
		return Identity{}, &Error{CheckSignature, "admin token is not signed by any configured --admin-public-key or --auditor-public-key"}
	}
	return v.check(std, rc, *key)
}

func (v *Verifier) check(std jwt.Claims, rc roleClaims, key Key) (Identity, error) {
	if std.Expiry == nil || std.IssuedAt == nil {
		return Identity{}, &Error{CheckClaims, "admin token must carry both exp and iat claims"}
	}
	now := v.now()
	err := std.ValidateWithLeeway(jwt.Expected{Time: now}, ClockSkew)
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return Identity{}, &Error{CheckExpired, fmt.Sprintf("admin token expired at %s; create a new one", std.Expiry.Time().UTC().Format(time.RFC3339))}
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return Identity{}, &Error{CheckClaims, "admin token iat is in the future; check the clocks"}
	case err != nil:
		return Identity{}, &Error{CheckClaims, fmt.Sprintf("admin token claims invalid: %v", err)}
	}
	if life := std.Expiry.Time().Sub(std.IssuedAt.Time()); life > MaxLifetime {
		return Identity{}, &Error{CheckClaims, fmt.Sprintf("admin token lifetime %s exceeds the maximum %s; use a shorter exp", life, MaxLifetime)}
	}
	id := Identity{Role: key.Role, KeyRole: key.Role, Fingerprint: Fingerprint(key.Public)}
	switch {
	case rc.Role == "" || rc.Role == key.Role:
		// No claim (Trustee's kbs-client sends none): the key's role.
	case rc.Role == adminapi.RoleAuditor:
		id.Role = adminapi.RoleAuditor
	case rc.Role == adminapi.RoleAdmin:
		return Identity{}, &Error{CheckRole, fmt.Sprintf("admin token claims role %q but is signed by an auditor key (%s); a token's role can only narrow its key's role: sign with a key given to kbs as --admin-public-key", rc.Role, id.Fingerprint)}
	default:
		return Identity{}, &Error{CheckClaims, fmt.Sprintf("admin token role %q unknown (want %q, %q or none)", rc.Role, adminapi.RoleAdmin, adminapi.RoleAuditor)}
	}
	return id, nil
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
