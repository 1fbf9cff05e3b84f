package token

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func appraisal() Appraisal {
	return Appraisal{
		Status:      "affirming",
		TrustVector: map[string]int{"executables": 2, "hardware": 2},
		PolicyID:    "default",
		Annotated: map[string]any{
			"sample":         map[string]any{"svn": "1"},
			ClaimInitData:    "",
			ClaimRuntimeData: map[string]any{ClaimTeePubKey: map[string]any{"kty": "EC", "crv": "P-256", "x": "AA", "y": "BB"}, "nonce": "n"},
		},
	}
}

func newSigner(t testing.TB, c *clock) *Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return NewSigner(key, time.Minute, c.now)
}

func TestIssueVerify(t *testing.T) {
	c := &clock{time.Unix(1_800_000_000, 0)}
	s := newSigner(t, c)
	tok, claims, err := s.Issue(appraisal())
	if err != nil {
		t.Fatal(err)
	}
	if claims["eat_profile"] != "tag:github.com,2024:confidential-containers/Trustee" || claims["iss"] != Issuer || claims["jti"] == "" {
		t.Fatalf("claims = %v", claims)
	}
	sub := claims["submods"].(map[string]any)[Submod].(map[string]any)
	if sub["ear.status"] != "affirming" || sub["ear.appraisal-policy-id"] != "default" {
		t.Fatalf("submod = %v", sub)
	}
	v, err := s.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if v.Tee != "sample" || !strings.Contains(string(v.TeePubKey), `"crv":"P-256"`) || !v.Expires.Equal(c.t.Add(time.Minute)) {
		t.Fatalf("verified = %+v", v)
	}
}

func TestVerifyRejects(t *testing.T) {
	c := &clock{time.Unix(1_800_000_000, 0)}
	s := newSigner(t, c)
	tok, _, err := s.Issue(appraisal())
	if err != nil {
		t.Fatal(err)
	}
	other := newSigner(t, c)
	otherTok, _, _ := other.Issue(appraisal())
	parts := strings.Split(tok, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"cloak-kbs"}`)) + "." + parts[2]
	noKey := appraisal()
	noKey.Annotated = map[string]any{"sample": map[string]any{}}
	noKeyTok, _, _ := s.Issue(noKey)

	tests := []struct {
		name, token, check string
		at                 time.Duration
	}{
		{"expired", tok, CheckExpired, 2 * time.Minute},
		{"future iat", tok, CheckIssuedAt, -time.Hour},
		{"other key", otherTok, CheckSignature, 0},
		{"tampered", tampered, CheckSignature, 0},
		{"garbage", "a.b.c", CheckMalformed, 0},
		{"too large", strings.Repeat("a", MaxTokenSize+1), CheckMalformed, 0},
		{"no tee key", noKeyTok, CheckTeePubKey, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.t = time.Unix(1_800_000_000, 0).Add(tc.at)
			_, err := s.Verify(tc.token)
			var te *Error
			if !errors.As(err, &te) || te.Check != tc.check {
				t.Fatalf("err = %v, want check %s", err, tc.check)
			}
		})
	}
}

func TestIssueRejectsBadStatus(t *testing.T) {
	s := newSigner(t, &clock{time.Now()})
	a := appraisal()
	a.Status = "great"
	if _, _, err := s.Issue(a); err == nil {
		t.Fatal("unknown status accepted")
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token-key.pem")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("key not reused: %v", err)
	}
	if err := os.WriteFile(path, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "not a PEM PRIVATE KEY") {
		t.Fatalf("junk key: %v", err)
	}
}

func FuzzVerify(f *testing.F) {
	c := &clock{time.Unix(1_800_000_000, 0)}
	s := newSigner(f, c)
	tok, _, err := s.Issue(appraisal())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Add("e30.e30.e30")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		v, err := s.Verify(in)
		if err == nil && v.TeePubKey == nil {
			t.Fatal("accepted token without tee-pubkey")
		}
		if err == nil && in != tok {
			// Only tokens this signer issued verify; ES256 signatures are
			// not malleable in jwx, so any other accepted input is a bug.
			t.Fatalf("accepted a token that was not issued: %q", in)
		}
	})
}
