// Package teekey holds the agent's ephemeral TEE key pair. Its public half
// goes to the KBS inside the attested runtime data; the KBS encrypts
// released resources to it as JWE, so only this guest can read them. The
// private half never leaves process memory.
package teekey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"

	"github.com/go-jose/go-jose/v4"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// Algorithms a TEE key can use, as JWE "alg" values.
const (
	ECDHES    = jose.ECDH_ES_A256KW // P-256, the default
	RSAOAEP   = jose.RSA_OAEP_256   // RSA-3072
	rsaBits   = 3072
	encAlg    = jose.A256GCM
	maxJWEDoc = kbstypes.MaxResponseBody
)

// Key is an ephemeral TEE key pair for one JWE key-management algorithm.
type Key struct {
	priv crypto.PrivateKey
	alg  jose.KeyAlgorithm
	jwk  json.RawMessage
}

// New generates a key for alg (ECDHES or RSAOAEP).
func New(alg jose.KeyAlgorithm) (*Key, error) {
	var (
		priv crypto.PrivateKey
		pub  crypto.PublicKey
	)
	switch alg {
	case ECDHES:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate P-256 TEE key: %w", err)
		}
		priv, pub = k, &k.PublicKey
	case RSAOAEP:
		k, err := rsa.GenerateKey(rand.Reader, rsaBits)
		if err != nil {
			return nil, fmt.Errorf("generate RSA-%d TEE key: %w", rsaBits, err)
		}
		priv, pub = k, &k.PublicKey
	default:
		return nil, fmt.Errorf("TEE key algorithm %q not supported: use %s or %s", alg, ECDHES, RSAOAEP)
	}
	jwk, err := jose.JSONWebKey{Key: pub, Algorithm: string(alg)}.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encode TEE public key as JWK: %w", err)
	}
	return &Key{priv: priv, alg: alg, jwk: jwk}, nil
}

// Algorithm returns the JWE "alg" the key accepts.
func (k *Key) Algorithm() jose.KeyAlgorithm { return k.alg }

// PublicJWK returns the public key as a JWK with "alg" set. The same bytes
// must be sent to the KBS and hashed into the report data.
func (k *Key) PublicJWK() json.RawMessage { return k.jwk }

// Decrypt opens a JWE in JSON serialization (the KBS sends the flattened
// form). Only the key's own "alg" and "enc" A256GCM are accepted, so a
// tampered header cannot downgrade the algorithm.
func (k *Key) Decrypt(jweJSON []byte) ([]byte, error) {
	if len(jweJSON) > maxJWEDoc {
		return nil, fmt.Errorf("decrypt resource: JWE is %d bytes, limit is %d", len(jweJSON), maxJWEDoc)
	}
	obj, err := jose.ParseEncryptedJSON(string(jweJSON), []jose.KeyAlgorithm{k.alg}, []jose.ContentEncryption{encAlg})
	if err != nil {
		return nil, fmt.Errorf("decrypt resource: parse JWE (want alg %s, enc %s): %w", k.alg, encAlg, err)
	}
	plain, err := obj.Decrypt(k.priv)
	if err != nil {
		return nil, fmt.Errorf("decrypt resource: JWE does not open with this guest's TEE key: %w", err)
	}
	return plain, nil
}
