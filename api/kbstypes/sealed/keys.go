package sealed

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
)

// JWK is an EC P-256 JSON Web Key (RFC 7517) as CoCo's `secret keygen`
// writes it: the private key has D, the public key (stored in the KBS as
// the resource a kid names) does not.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
	Kid string `json:"kid,omitempty"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d,omitempty"`
}

// PrivateJWK returns key as a private JWK (alg ES256, use sig) with kid,
// which may be empty.
func PrivateJWK(key *ecdsa.PrivateKey, kid string) (JWK, error) {
	j, err := PublicJWK(&key.PublicKey, kid)
	if err != nil {
		return JWK{}, err
	}
	d, err := key.Bytes()
	if err != nil {
		return JWK{}, fmt.Errorf("encode private key: %w", err)
	}
	j.D = b64.EncodeToString(d)
	return j, nil
}

// PublicJWK returns pub as a public JWK (alg ES256, use sig) with kid,
// which may be empty.
func PublicJWK(pub *ecdsa.PublicKey, kid string) (JWK, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return JWK{}, errors.New("the key must be an EC P-256 key (ES256)")
	}
	raw, err := pub.Bytes() // 0x04 || X || Y
	if err != nil {
		return JWK{}, fmt.Errorf("encode public key: %w", err)
	}
	return JWK{Kty: "EC", Crv: "P-256", Alg: AlgES256, Use: "sig", Kid: kid,
		X: b64.EncodeToString(raw[1:33]), Y: b64.EncodeToString(raw[33:])}, nil
}

// PublicKey returns the P-256 public key j describes.
func (j JWK) PublicKey() (*ecdsa.PublicKey, error) {
	if j.Kty != "EC" || j.Crv != "P-256" {
		return nil, fmt.Errorf("JWK is kty %q crv %q, want an EC P-256 key", j.Kty, j.Crv)
	}
	if j.Alg != "" && j.Alg != AlgES256 {
		return nil, fmt.Errorf("JWK alg is %q, want %q", j.Alg, AlgES256)
	}
	x, err := b64.DecodeString(j.X)
	if err != nil || len(x) != 32 {
		return nil, errors.New(`JWK "x" is not 32 bytes of base64url`)
	}
	y, err := b64.DecodeString(j.Y)
	if err != nil || len(y) != 32 {
		return nil, errors.New(`JWK "y" is not 32 bytes of base64url`)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, fmt.Errorf("JWK: %w", err)
	}
	return pub, nil
}

// ParsePublicJWK parses a public (or private) P-256 JWK and returns its
// public key: the key a guest resolves from the sealed secret's kid.
func ParsePublicJWK(data []byte) (*ecdsa.PublicKey, error) {
	var j JWK
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("not a JWK (JSON object): %w", err)
	}
	return j.PublicKey()
}

// ParseSigningKey parses a P-256 private key: a private JWK, as CoCo's
// `secret` CLI reads it (--signing-jwk-path), or PEM ("PRIVATE KEY" PKCS#8
// or "EC PRIVATE KEY" SEC 1).
func ParseSigningKey(data []byte) (*ecdsa.PrivateKey, error) {
	if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '{' {
		return parsePrivateJWK(trimmed)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("neither a JWK nor a PEM private key")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q, want \"PRIVATE KEY\" or \"EC PRIVATE KEY\"", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("PEM %s: %w", block.Type, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("PEM key is %T, want an EC P-256 private key", key)
	}
	return ec, nil
}

func parsePrivateJWK(data []byte) (*ecdsa.PrivateKey, error) {
	var j JWK
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("not a JWK (JSON object): %w", err)
	}
	pub, err := j.PublicKey()
	if err != nil {
		return nil, err
	}
	if j.D == "" {
		return nil, errors.New(`JWK has no "d": it is a public key; sign with the private JWK`)
	}
	d, err := b64.DecodeString(j.D)
	if err != nil || len(d) != 32 {
		return nil, errors.New(`JWK "d" is not 32 bytes of base64url`)
	}
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d)
	if err != nil {
		return nil, fmt.Errorf("JWK: %w", err)
	}
	if !key.PublicKey.Equal(pub) {
		return nil, errors.New(`JWK "x" and "y" are not the public key of its "d"`)
	}
	return key, nil
}
