// Package jwe seals released resources to the TEE key the guest bound into its
// evidence: the key arrives as a public JWK in the attestation's runtime data
// and resources leave the KBS as flattened JWE JSON (enc A256GCM).
package jwe

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// MaxKeySize bounds the JWK text; a 4096-bit RSA JWK is under 1 KiB.
const MaxKeySize = 8 << 10

// MinRSABits is the smallest RSA modulus accepted.
const MinRSABits = 2048

// Key-management algorithms, as written in the JWK's "alg".
const (
	AlgECDH = string(jose.ECDH_ES_A256KW) // EC P-256 / P-384
	AlgRSA  = string(jose.RSA_OAEP_256)   // RSA >= 2048 bits
)

// Recipient is a validated TEE public key.
type Recipient struct {
	key jose.JSONWebKey
	alg jose.KeyAlgorithm
}

// ParseRecipient parses and validates the tee-pubkey JWK: a public EC P-256
// or P-384 key with alg ECDH-ES+A256KW, or a public RSA key of at least 2048
// bits with alg RSA-OAEP-256. When "alg" is absent it defaults by key type.
func ParseRecipient(raw json.RawMessage) (*Recipient, error) {
	if len(raw) > MaxKeySize {
		return nil, fmt.Errorf("tee-pubkey is %d bytes, limit is %d", len(raw), MaxKeySize)
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("tee-pubkey is not a valid JWK: %w", err)
	}
	var def jose.KeyAlgorithm
	switch pub := k.Key.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, fmt.Errorf("tee-pubkey EC curve %s not supported (use P-256 or P-384)", pub.Curve.Params().Name)
		}
		def = jose.ECDH_ES_A256KW
	case *rsa.PublicKey:
		if pub.N.BitLen() < MinRSABits {
			return nil, fmt.Errorf("tee-pubkey RSA key has %d bits, at least %d required", pub.N.BitLen(), MinRSABits)
		}
		def = jose.RSA_OAEP_256
	case *ecdsa.PrivateKey, *rsa.PrivateKey:
		return nil, fmt.Errorf("tee-pubkey must be a public key; the JWK contains private key material")
	default:
		return nil, fmt.Errorf("tee-pubkey key type %T not supported (use EC P-256/P-384 or RSA)", k.Key)
	}
	if !k.Valid() {
		return nil, fmt.Errorf("tee-pubkey JWK is not a valid key")
	}
	alg := def
	if k.Algorithm != "" {
		alg = jose.KeyAlgorithm(k.Algorithm)
		if alg != def {
			return nil, fmt.Errorf("tee-pubkey alg %q does not fit the key type (want %q)", k.Algorithm, def)
		}
	}
	return &Recipient{key: k, alg: alg}, nil
}

// Algorithm returns the key-management algorithm used for this recipient.
func (r *Recipient) Algorithm() string { return string(r.alg) }

// Seal encrypts plaintext to the recipient and returns flattened JWE JSON.
func (r *Recipient) Seal(plaintext []byte) ([]byte, error) {
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: r.alg, Key: r.key.Key}, nil)
	if err != nil {
		return nil, fmt.Errorf("prepare JWE encryption: %w", err)
	}
	obj, err := enc.Encrypt(plaintext)
	if err != nil {
		return nil, fmt.Errorf("encrypt resource: %w", err)
	}
	return []byte(obj.FullSerialize()), nil
}
