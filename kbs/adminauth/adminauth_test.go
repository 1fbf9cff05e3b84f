package adminauth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
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
	v := NewVerifier([]ed25519.PublicKey{otherPub, pub}, func() time.Time { return now })
	claims := func(role string, iat, exp time.Duration) map[string]any {
		c := map[string]any{"role": role}
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
		{"auditor second key", sign(t, otherPriv, claims("auditor", -time.Second, time.Minute)), "auditor", ""},
		{"missing", "", "", CheckMissing},
		{"garbage", "x.y.z", "", CheckMalformed},
		{"other key", sign(t, strangerPriv, claims("admin", -time.Second, time.Minute)), "", CheckSignature},
		{"expired", sign(t, priv, claims("admin", -time.Hour, -2*time.Minute)), "", CheckExpired},
		{"no exp", sign(t, priv, claims("admin", -time.Second, 0)), "", CheckClaims},
		{"no iat", sign(t, priv, claims("admin", 0, time.Minute)), "", CheckClaims},
		{"future iat", sign(t, priv, claims("admin", 10*time.Minute, 20*time.Minute)), "", CheckClaims},
		{"too long", sign(t, priv, claims("admin", -time.Second, 2*time.Hour)), "", CheckClaims},
		{"bad role", sign(t, priv, claims("root", -time.Second, time.Minute)), "", CheckClaims},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			role, err := v.Verify(tc.token)
			if tc.check == "" {
				if err != nil || role != tc.role {
					t.Fatalf("Verify = %q, %v", role, err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Check != tc.check {
				t.Fatalf("err = %v, want check %s", err, tc.check)
			}
		})
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
	v := NewVerifier([]ed25519.PublicKey{pub}, func() time.Time { return now })
	good := sign(f, priv, map[string]any{"role": "admin", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()})
	f.Add(good)
	f.Add("eyJhbGciOiJFZERTQSJ9.e30.AAAA")
	f.Fuzz(func(t *testing.T, tok string) {
		role, err := v.Verify(tok)
		if err == nil && role != "admin" {
			t.Fatalf("accepted role %q", role)
		}
		var e *Error
		if err != nil && !errors.As(err, &e) {
			t.Fatalf("untyped error %v", err)
		}
	})
}
