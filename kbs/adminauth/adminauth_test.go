package adminauth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func sign(t testing.TB, key ed25519.PrivateKey, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestVerify(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	otherPub, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Unix(1_800_000_000, 0)
	auditorPub, auditorPriv, _ := ed25519.GenerateKey(rand.Reader)
	v := NewVerifier([]Key{{otherPub, "admin"}, {pub, "admin"}, {auditorPub, "auditor"}}, func() time.Time { return now })
	claims := func(role string, iat, exp time.Duration) map[string]any {
		c := map[string]any{}
		if role != "" {
			c["role"] = role
		}
		if iat != 0 {
			c["iat"] = now.Add(iat).Unix()
		}
		if exp != 0 {
			c["exp"] = now.Add(exp).Unix()
		}
		return c
	}
	_, strangerPriv, _ := ed25519.GenerateKey(rand.Reader)
	tests := []struct {
		name, token, role, check string
	}{
		{"admin", sign(t, priv, claims("admin", -time.Second, time.Minute)), "admin", ""},
		{"admin key narrowed to auditor", sign(t, otherPriv, claims("auditor", -time.Second, time.Minute)), "auditor", ""},
		{"admin key without role claim", sign(t, priv, claims("", -time.Second, time.Minute)), "admin", ""},
		{"auditor key", sign(t, auditorPriv, claims("auditor", -time.Second, time.Minute)), "auditor", ""},
		{"auditor key without role claim", sign(t, auditorPriv, claims("", -time.Second, time.Minute)), "auditor", ""},
		{"auditor key claims admin", sign(t, auditorPriv, claims("admin", -time.Second, time.Minute)), "", CheckRole},
		{"missing", "", "", CheckMissing},
		{"garbage", "x.y.z", "", CheckMalformed},
		{"other key", sign(t, strangerPriv, claims("admin", -time.Second, time.Minute)), "", CheckSignature},
		{"expired", sign(t, priv, claims("admin", -time.Hour, -2*time.Minute)), "", CheckExpired},
		{"no exp", sign(t, priv, claims("admin", -time.Second, 0)), "", CheckClaims},
		{"no iat", sign(t, priv, claims("admin", 0, time.Minute)), "", CheckClaims},
		{"future iat", sign(t, priv, claims("admin", 10*time.Minute, 20*time.Minute)), "", CheckClaims},
		// Trustee's kbs-client: exp = iat + 7200, no role claim.
		{"kbs-client lifetime", sign(t, priv, claims("", -time.Second, 2*time.Hour-time.Second)), "admin", ""},
		{"too long", sign(t, priv, claims("admin", -time.Second, 2*time.Hour)), "", CheckClaims},
		{"bad role", sign(t, priv, claims("root", -time.Second, time.Minute)), "", CheckClaims},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.Verify(tc.token)
			if tc.check == "" {
				if err != nil || id.Role != tc.role {
					t.Fatalf("Verify = %+v, %v", id, err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Check != tc.check {
				t.Fatalf("err = %v, want check %s", err, tc.check)
			}
			if tc.check == CheckRole && !strings.Contains(e.Detail, "auditor key") {
				t.Fatalf("detail %q does not say the key is an auditor key", e.Detail)
			}
		})
	}
}

func TestIdentityNamesTheKey(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Unix(1_800_000_000, 0)
	v := NewVerifier([]Key{{pub, "admin"}}, func() time.Time { return now })
	id, err := v.Verify(sign(t, priv, map[string]any{"iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}))
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	if id.Fingerprint != hex.EncodeToString(sum[:]) || id.KeyRole != "admin" {
		t.Fatalf("identity %+v, want fingerprint %x", id, sum)
	}
}

func TestParsePublicKey(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	got, err := ParsePublicKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil || !got.Equal(pub) {
		t.Fatalf("ParsePublicKey = %v, %v", got, err)
	}
	if _, err := ParsePublicKey([]byte("nope")); err == nil || !strings.Contains(err.Error(), "PEM") {
		t.Fatalf("junk: %v", err)
	}
}

func FuzzVerify(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Unix(1_800_000_000, 0)
	v := NewVerifier([]Key{{pub, "admin"}}, func() time.Time { return now })
	good := sign(f, priv, map[string]any{"role": "admin", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()})
	f.Add(good)
	f.Add("eyJhbGciOiJFZERTQSJ9.e30.AAAA")
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := v.Verify(tok)
		if err == nil && id.Role != "admin" && id.Role != "auditor" {
			t.Fatalf("accepted role %q", id.Role)
		}
		var e *Error
		if err != nil && !errors.As(err, &e) {
			t.Fatalf("untyped error %v", err)
		}
	})
}
