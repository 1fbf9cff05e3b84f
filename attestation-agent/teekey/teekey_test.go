package teekey

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// encryptTo encrypts plain to the public JWK the way a KBS does: flattened
// JSON serialization, A256GCM.
func encryptTo(t testing.TB, jwk json.RawMessage, alg jose.KeyAlgorithm, plain []byte) []byte {
	t.Helper()
	var pub jose.JSONWebKey
	if err := pub.UnmarshalJSON(jwk); err != nil {
		t.Fatal(err)
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: alg, Key: pub.Key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := enc.Encrypt(plain)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(obj.FullSerialize())
}

func TestRoundTrip(t *testing.T) {
	for _, alg := range []jose.KeyAlgorithm{ECDHES, RSAOAEP} {
		t.Run(string(alg), func(t *testing.T) {
			k, err := New(alg)
			if err != nil {
				t.Fatal(err)
			}
			var fields map[string]any
			if err := json.Unmarshal(k.PublicJWK(), &fields); err != nil {
				t.Fatal(err)
			}
			if fields["alg"] != string(alg) {
				t.Errorf("JWK alg = %v, want %s", fields["alg"], alg)
			}
			if _, ok := fields["d"]; ok {
				t.Fatal("public JWK contains the private exponent/scalar")
			}
			plain := []byte("secret value")
			got, err := k.Decrypt(encryptTo(t, k.PublicJWK(), alg, plain))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, plain) {
				t.Errorf("Decrypt = %q, want %q", got, plain)
			}
		})
	}
}

func TestNewRejectsUnknownAlgorithm(t *testing.T) {
	if _, err := New(jose.RSA1_5); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("New(RSA1_5) error = %v", err)
	}
}

func TestDecryptRejects(t *testing.T) {
	ec, err := New(ECDHES)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherJWK, _ := jose.JSONWebKey{Key: &other.PublicKey}.MarshalJSON()

	// Same key, but content encryption A128GCM instead of A256GCM.
	var pub jose.JSONWebKey
	_ = pub.UnmarshalJSON(ec.PublicJWK())
	weakEnc, _ := jose.NewEncrypter(jose.A128GCM, jose.Recipient{Algorithm: ECDHES, Key: pub.Key}, nil)
	weakObj, _ := weakEnc.Encrypt([]byte("x"))

	tests := []struct {
		name    string
		jwe     []byte
		wantErr string
	}{
		{"other key", encryptTo(t, otherJWK, ECDHES, []byte("x")), "does not open"},
		{"wrong alg", encryptTo(t, ec.PublicJWK(), jose.ECDH_ES, []byte("x")), "parse JWE"},
		{"wrong enc", []byte(weakObj.FullSerialize()), "parse JWE"},
		{"not JSON", []byte("eyJhbGciOi.x.y.z.w"), "parse JWE"},
		{"empty", nil, "parse JWE"},
		{"oversized", bytes.Repeat([]byte(" "), maxJWEDoc+1), "limit is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ec.Decrypt(tc.jwe)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Decrypt error = %v, want containing %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzDecrypt(f *testing.F) {
	k, err := New(ECDHES)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(encryptTo(f, k.PublicJWK(), ECDHES, []byte("seed")))
	f.Add([]byte(`{"protected":"e30","iv":"","ciphertext":"","tag":""}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		// Must never panic; anything not encrypted to k must fail.
		plain, err := k.Decrypt(data)
		if err == nil && plain == nil {
			t.Fatal("Decrypt returned neither plaintext nor error")
		}
	})
}
