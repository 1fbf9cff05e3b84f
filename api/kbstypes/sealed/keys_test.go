package sealed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
)

// testKeyJWK is guest-components' confidential-data-hub/hub/src/secret/
// tests/test-key.json verbatim: the file CoCo's `secret seal
// --signing-jwk-path` reads.
const testKeyJWK = `{
    "kty": "EC",
    "d": "7baJLiTk68NcLgYPv05jJvElqoAhbzi1ZWx4OyILUtA",
    "use": "sig",
    "crv": "P-256",
    "kid": "test-key",
    "x": "QT3_slJmispaOwnAo6hxebXGLRuiveFuRCLpS4j4S4k",
    "y": "jcDn4N4nRBQ-a7_D3qjqtb6hwOAXh_ve1wvibPSi1G0",
    "alg": "ES256"
}`

func TestParseSigningKeyJWK(t *testing.T) {
	key, err := ParseSigningKey([]byte(testKeyJWK))
	if err != nil {
		t.Fatal(err)
	}
	if !key.Equal(testKey(t)) {
		t.Fatal("parsed key is not CDH's test key")
	}
	// Sealing with it reproduces CDH's known answer's signing input.
	s, err := Parse(signedKAT)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(&key.PublicKey); err != nil {
		t.Errorf("CDH's sealed secret does not verify with the parsed key: %v", err)
	}
	// Written back, the private JWK round-trips; the public one has no "d".
	j, err := PrivateJWK(key, "test-key")
	if err != nil {
		t.Fatal(err)
	}
	if j.D != "7baJLiTk68NcLgYPv05jJvElqoAhbzi1ZWx4OyILUtA" || j.X != "QT3_slJmispaOwnAo6hxebXGLRuiveFuRCLpS4j4S4k" || j.Kid != "test-key" || j.Alg != "ES256" {
		t.Errorf("PrivateJWK = %+v", j)
	}
	pj, _ := PublicJWK(&key.PublicKey, "test-key")
	b, _ := json.Marshal(pj)
	if strings.Contains(string(b), `"d"`) {
		t.Errorf("public JWK carries d: %s", b)
	}
	pub, err := ParsePublicJWK(b)
	if err != nil || !pub.Equal(&key.PublicKey) {
		t.Errorf("ParsePublicJWK = %v, %v", pub, err)
	}
}

func TestParseSigningKeyPEM(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	sec1, _ := x509.MarshalECPrivateKey(key)
	for typ, der := range map[string][]byte{"PRIVATE KEY": pkcs8, "EC PRIVATE KEY": sec1} {
		got, err := ParseSigningKey(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
		if err != nil || !got.Equal(key) {
			t.Errorf("%s: %v", typ, err)
		}
	}
}

func TestParseSigningKeyRefuses(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKCS8PrivateKey(p384)
	pub, _ := x509.MarshalPKIXPublicKey(&testKey(t).PublicKey)
	jwk := func(edit func(*JWK)) string {
		var j JWK
		if err := json.Unmarshal([]byte(testKeyJWK), &j); err != nil {
			t.Fatal(err)
		}
		edit(&j)
		b, _ := json.Marshal(j)
		return string(b)
	}
	for name, tc := range map[string]struct{ in, want string }{
		"public JWK":         {jwk(func(j *JWK) { j.D = "" }), `no "d"`},
		"RSA JWK":            {jwk(func(j *JWK) { j.Kty = "RSA" }), "want an EC P-256 key"},
		"P-384 JWK":          {jwk(func(j *JWK) { j.Crv = "P-384" }), "want an EC P-256 key"},
		"other alg":          {jwk(func(j *JWK) { j.Alg = "ES384" }), `want "ES256"`},
		"short x":            {jwk(func(j *JWK) { j.X = "AAAA" }), `"x" is not 32 bytes`},
		"mismatched x and d": {jwk(func(j *JWK) { j.D = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA" }), "not the public key of its"},
		"broken JSON":        {`{"kty":`, "not a JWK"},
		"not a key":          {"hello", "neither a JWK nor a PEM"},
		"PEM public key":     {string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})), `PEM block "PUBLIC KEY"`},
		"P-384 PEM":          {string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p384DER})), "want an EC P-256 private key"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseSigningKey([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
