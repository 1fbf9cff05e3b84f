package jwe

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

func jwk(t testing.TB, key any, alg string) []byte {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKey{Key: key, Algorithm: alg})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSealRoundTrip(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	tests := []struct {
		name    string
		pub     []byte
		priv    any
		wantAlg string
	}{
		{"p256 explicit", jwk(t, &p256.PublicKey, AlgECDH), p256, AlgECDH},
		{"p256 default alg", jwk(t, &p256.PublicKey, ""), p256, AlgECDH},
		{"p384", jwk(t, &p384.PublicKey, ""), p384, AlgECDH},
		{"rsa", jwk(t, &rsaKey.PublicKey, AlgRSA), rsaKey, AlgRSA},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRecipient(tc.pub)
			if err != nil {
				t.Fatal(err)
			}
			if r.Algorithm() != tc.wantAlg {
				t.Fatalf("alg %s, want %s", r.Algorithm(), tc.wantAlg)
			}
			sealed, err := r.Seal([]byte("secret"))
			if err != nil {
				t.Fatal(err)
			}
			var flat map[string]any
			if err := json.Unmarshal(sealed, &flat); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"protected", "iv", "ciphertext", "tag"} {
				if _, ok := flat[f]; !ok {
					t.Fatalf("flattened JWE lacks %q: %s", f, sealed)
				}
			}
			if _, ok := flat["recipients"]; ok {
				t.Fatalf("want flattened, got general serialization: %s", sealed)
			}
			obj, err := jose.ParseEncryptedJSON(string(sealed), []jose.KeyAlgorithm{jose.KeyAlgorithm(tc.wantAlg)}, []jose.ContentEncryption{jose.A256GCM})
			if err != nil {
				t.Fatal(err)
			}
			pt, err := obj.Decrypt(tc.priv)
			if err != nil || string(pt) != "secret" {
				t.Fatalf("Decrypt = %q, %v", pt, err)
			}
		})
	}
}

func TestParseRecipientRejects(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	tests := []struct {
		name, want string
		raw        []byte
	}{
		{"not json", "not a valid JWK", []byte(`{`)},
		{"private", "private key material", jwk(t, p256, "")},
		{"wrong alg", "does not fit", jwk(t, &p256.PublicKey, AlgRSA)},
		{"p521", "not supported", jwk(t, &p521.PublicKey, "")},
		{"small rsa", "at least 2048", jwk(t, &small.PublicKey, "")},
		{"symmetric", "not supported", []byte(`{"kty":"oct","k":"AAAA"}`)},
		{"huge", "limit is", []byte(`{"kty":"EC","x":"` + strings.Repeat("A", MaxKeySize) + `"}`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecipient(tc.raw)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func FuzzParseRecipient(f *testing.F) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add(jwk(f, &p256.PublicKey, AlgECDH))
	f.Add([]byte(`{"kty":"RSA","n":"AQAB","e":"AQAB"}`))
	f.Add([]byte(`{"kty":"EC","crv":"P-256"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := ParseRecipient(raw)
		if err != nil {
			return
		}
		if _, err := r.Seal([]byte("x")); err != nil {
			t.Fatalf("accepted key cannot seal: %v", err)
		}
	})
}
