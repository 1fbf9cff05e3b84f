package sealed

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// testKey is guest-components' confidential-data-hub/hub/src/secret/tests/
// test-key.json, the key CDH's own sealed-secret tests sign with.
func testKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	dec := func(s string) []byte {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), dec("7baJLiTk68NcLgYPv05jJvElqoAhbzi1ZWx4OyILUtA"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{4}, dec("QT3_slJmispaOwnAo6hxebXGLRuiveFuRCLpS4j4S4k")...), dec("jcDn4N4nRBQ-a7_D3qjqtb6hwOAXh_ve1wvibPSi1G0")...)
	if !bytes.Equal(pub, want) {
		t.Fatal("test-key.json's d does not give its x and y")
	}
	return k
}

// signedKAT is CDH's tests/vault-2.json secret sealed as
// Secret::to_signed_base64_string builds it with test-key.json and kid
// "test-key": header {"alg":"ES256","kid":"test-key"}, compact serde_json
// payload, base64url without padding, ES256 signature (RFC 6979, as the p256
// crate signs). Computed outside Go with Python's cryptography package.
const signedKAT = "sealed.eyJhbGciOiJFUzI1NiIsImtpZCI6InRlc3Qta2V5In0." +
	"eyJ2ZXJzaW9uIjoiMC4xLjAiLCJ0eXBlIjoidmF1bHQiLCJuYW1lIjoia2JzOi8vL29uZS8yL3Ryb2lzIiwicHJvdmlkZXIiOiJrYnMiLCJwcm92aWRlcl9zZXR0aW5ncyI6e30sImFubm90YXRpb25zIjp7fX0." +
	"PUz_RYYqv5EljmGYdwYXfzijZAJWru3oPV406e5Wf6eQj6YH6xekYut-S-cHGFt4kXNbe2YHIclPTZKkT44M1g"

// unsignedKAT is the example of guest-components
// confidential-data-hub/docs/SEALED_SECRET.md as of the parent of commit
// 35608afb ("docs: update docs for sealed secrets"): the placeholder form
// with pretty-printed JSON, still what CoCo's tools write for guests that
// skip verification.
const unsignedKAT = "sealed.fakejwsheader.ewogICAgInZlcnNpb24iOiAiMC4xLjAiLAogICAgInR5cGUiOiAidmF1bHQiLAogICAgIm5hbWUiOiAia2JzOi8vL2RlZmF1bHQvc2VhbGVkLXNlY3JldC90ZXN0IiwKICAgICJwcm92aWRlciI6ICJrYnMiLAogICAgInByb3ZpZGVyX3NldHRpbmdzIjoge30sCiAgICAiYW5ub3RhdGlvbnMiOiB7fQp9Cg.fakesignature"

func TestParseKnownAnswers(t *testing.T) {
	s, err := Parse(signedKAT)
	if err != nil {
		t.Fatal(err)
	}
	if s.Header == nil || *s.Header != (Header{Alg: "ES256", Kid: "test-key"}) {
		t.Errorf("header = %+v", s.Header)
	}
	if p, err := s.Secret.Resource(); err != nil || p != (kbstypes.ResourcePath{Repository: "one", Type: "2", Tag: "trois"}) {
		t.Errorf("resource = %v, %v", p, err)
	}
	if err := s.Verify(&testKey(t).PublicKey); err != nil {
		t.Errorf("Verify: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := s.Verify(&other.PublicKey); err == nil {
		t.Error("signature verified with another key")
	}

	u, err := Parse(unsignedKAT)
	if err != nil {
		t.Fatal(err)
	}
	if u.Header != nil || u.Secret.Name != "kbs:///default/sealed-secret/test" || u.Secret.Provider != "kbs" {
		t.Errorf("unsigned = %+v", u)
	}
	if err := u.Verify(&testKey(t).PublicKey); !errors.Is(err, ErrUnsigned) {
		t.Errorf("Verify(unsigned) = %v, want ErrUnsigned", err)
	}
}

// Seal writes the header and payload bytes of CDH's to_signed_base64_string;
// only the ECDSA signature, randomised in Go, differs from signedKAT.
func TestSealMatchesCDH(t *testing.T) {
	out, err := Seal(Vault(kbstypes.ResourcePath{Repository: "one", Type: "2", Tag: "trois"}), testKey(t), "test-key")
	if err != nil {
		t.Fatal(err)
	}
	kat := signedKAT[:strings.LastIndexByte(signedKAT, '.')+1]
	if !strings.HasPrefix(out, kat) {
		t.Fatalf("Seal = %s\nwant prefix %s", out, kat)
	}
	s, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(&testKey(t).PublicKey); err != nil {
		t.Fatalf("own seal does not verify: %v", err)
	}

	u, err := SealUnsigned(Vault(kbstypes.ResourcePath{Repository: "default", Type: "app", Tag: "db-password"}))
	if err != nil {
		t.Fatal(err)
	}
	// The form of confidential-devhub/cococtl and the CoCo docs: compact
	// JSON, base64url without padding, placeholder header and signature.
	const want = "sealed.fakejwsheader.eyJ2ZXJzaW9uIjoiMC4xLjAiLCJ0eXBlIjoidmF1bHQiLCJuYW1lIjoia2JzOi8vL2RlZmF1bHQvYXBwL2RiLXBhc3N3b3JkIiwicHJvdmlkZXIiOiJrYnMiLCJwcm92aWRlcl9zZXR0aW5ncyI6e30sImFubm90YXRpb25zIjp7fX0.fakesignature"
	if u != want {
		t.Errorf("SealUnsigned = %s\nwant %s", u, want)
	}
}

func TestSealEnvelopeRoundTrip(t *testing.T) {
	in := Secret{Version: Version, Type: TypeEnvelope, Provider: "aliyun", KeyID: "xxx", EncryptedKey: "yyy",
		EncryptedData: "zzz", WrapType: "A256GCM", IV: "www", Annotations: map[string]any{"a": "<b>"}}
	out, err := Seal(in, testKey(t), "kbs:///default/keys/signing")
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := b64.DecodeString(strings.Split(out, ".")[2])
	// CDH's tests/envelope-1.json fields in serde's order, no HTML escaping.
	const want = `{"version":"0.1.0","type":"envelope","key_id":"xxx","encrypted_key":"yyy","encrypted_data":"zzz","wrap_type":"A256GCM","iv":"www","provider":"aliyun","provider_settings":{},"annotations":{"a":"<b>"}}`
	if string(payload) != want {
		t.Errorf("payload %s\nwant %s", payload, want)
	}
	s, err := Parse(out)
	if err != nil || s.Secret.KeyID != "xxx" || s.Secret.Annotations["a"] != "<b>" {
		t.Fatalf("Parse = %+v, %v", s, err)
	}
}

func seal(payload string) string {
	return Prefix + UnsignedHeader + "." + b64.EncodeToString([]byte(payload)) + "." + UnsignedSignature
}

func TestParseErrors(t *testing.T) {
	vault := func(name string) string {
		return `{"version":"0.1.0","type":"vault","name":"` + name + `","provider":"kbs","provider_settings":{},"annotations":{}}`
	}
	signedParts := strings.Split(signedKAT, ".")
	tests := []struct{ name, in, want string }{
		{"no prefix", strings.TrimPrefix(signedKAT, Prefix), `missing prefix "sealed."`},
		{"two parts", Prefix + "a.b", "2 dot-separated parts"},
		{"four parts", signedKAT + ".x", "4 dot-separated parts"},
		{"too large", Prefix + strings.Repeat("a", MaxSize), "limit is"},
		{"header not base64url", Prefix + "!!." + signedParts[2] + "." + signedParts[3], "header: not base64url"},
		{"header not json", Prefix + b64.EncodeToString([]byte("nope")) + "." + signedParts[2] + "." + signedParts[3], "header is not a JSON object"},
		{"alg none", Prefix + b64.EncodeToString([]byte(`{"alg":"none","kid":"k"}`)) + "." + signedParts[2] + "." + signedParts[3], `alg "none", want "ES256"`},
		{"no kid", Prefix + b64.EncodeToString([]byte(`{"alg":"ES256"}`)) + "." + signedParts[2] + "." + signedParts[3], "no kid"},
		{"short signature", strings.Join(signedParts[:3], ".") + ".AAAA", "want 64"},
		{"padded payload", Prefix + UnsignedHeader + "." + b64.EncodeToString([]byte(vault("kbs:///a/b/c"))) + "=." + UnsignedSignature, "payload: not base64url without padding"},
		{"payload not json", seal("[1]"), "payload is not a JSON object"},
		{"unknown type", seal(`{"version":"0.1.0","type":"kms","provider":"x"}`), `unknown type "kms"`},
		{"bad version", seal(`{"version":"0.2.0","type":"vault","name":"n","provider":"x","provider_settings":{},"annotations":{}}`), `version "0.2.0"`},
		{"no version", seal(`{"type":"vault"}`), `field "version" is missing`},
		{"no annotations", seal(`{"version":"0.1.0","type":"vault","name":"n","provider":"x","provider_settings":{}}`), `field "annotations" is missing`},
		{"no name", seal(`{"version":"0.1.0","type":"vault","provider":"kbs","provider_settings":{},"annotations":{}}`), `field "name" is missing`},
		{"envelope without iv", seal(`{"version":"0.1.0","type":"envelope","key_id":"k","encrypted_key":"e","encrypted_data":"d","wrap_type":"A256GCM","provider":"p","provider_settings":{},"annotations":{}}`), `field "iv" is missing`},
		{"bad wrap type", seal(`{"version":"0.1.0","type":"envelope","key_id":"k","encrypted_key":"e","encrypted_data":"d","wrap_type":"ROT13","iv":"i","provider":"p","provider_settings":{},"annotations":{}}`), `wrap_type "ROT13"`},
		{"bad resource URI", seal(vault("kbs:///only/two")), "bad resource URI"},
		{"escaping resource URI", seal(vault("kbs:///a/../c")), "bad resource URI"},
		{"not kbs scheme", seal(vault("https://x/a/b/c")), "bad resource URI"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseResourceURI(t *testing.T) {
	for in, want := range map[string]kbstypes.ResourcePath{
		"kbs:///default/app/db-password":          {Repository: "default", Type: "app", Tag: "db-password"},
		"kbs://kbs.example:8080/default/app/key1": {Repository: "default", Type: "app", Tag: "key1"},
	} {
		if got, err := ParseResourceURI(in); err != nil || got != want {
			t.Errorf("ParseResourceURI(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "kbs:///a/b", "kbs:///a/b/c/d", "kbs:///a//c", "kbs:/a/b/c", "vault:///a/b/c"} {
		if _, err := ParseResourceURI(in); err == nil {
			t.Errorf("ParseResourceURI(%q) accepted", in)
		}
	}
}

func TestSealRefuses(t *testing.T) {
	rsaLike, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	good := Vault(kbstypes.ResourcePath{Repository: "a", Type: "b", Tag: "c"})
	if _, err := Seal(good, rsaLike, "k"); err == nil {
		t.Error("P-384 key accepted")
	}
	if _, err := Seal(good, testKey(t), ""); err == nil {
		t.Error("empty kid accepted")
	}
	bad := good
	bad.Name = "kbs:///a/b"
	if _, err := Seal(bad, testKey(t), "k"); err == nil {
		t.Error("bad resource URI sealed")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(signedKAT)
	f.Add(unsignedKAT)
	f.Add(seal(`{"version":"0.1.0","type":"envelope","key_id":"k","encrypted_key":"e","encrypted_data":"d","wrap_type":"A256GCM","iv":"i","provider":"p","provider_settings":{},"annotations":{}}`))
	f.Add("sealed.a.b.c")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(in)
		if err != nil {
			return
		}
		if len(in) > MaxSize || !strings.HasPrefix(in, Prefix) {
			t.Fatalf("accepted %d bytes without the limits", len(in))
		}
		// What parses re-seals, and the result parses to the same secret.
		out, err := SealUnsigned(s.Secret)
		if err != nil {
			t.Fatalf("parsed secret does not re-seal: %v", err)
		}
		again, err := Parse(out)
		if err != nil || again.Secret.Name != s.Secret.Name || again.Secret.Type != s.Secret.Type {
			t.Fatalf("re-sealed %q parses to %+v, %v", out, again, err)
		}
	})
}
