package bundle

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/veraison/go-cose"
)

// ErrKey marks a key of a kind a bundle cannot be signed with.
var ErrKey = errors.New("unsupported reference-value signing key: use Ed25519 or ECDSA P-256/P-384")

// Algorithm returns the COSE algorithm for a public key.
func Algorithm(pub crypto.PublicKey) (cose.Algorithm, error) {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return cose.AlgorithmEdDSA, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return cose.AlgorithmES256, nil
		case elliptic.P384():
			return cose.AlgorithmES384, nil
		}
	}
	return 0, fmt.Errorf("%w (got %T)", ErrKey, pub)
}

// KeyID is the SHA-256 of the key's PKIX (SubjectPublicKeyInfo) DER: what a
// bundle names its signer by and the KBS records with each stored value.
func KeyID(pub crypto.PublicKey) ([]byte, error) {
	if _, err := Algorithm(pub); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	s := sha256.Sum256(der)
	return s[:], nil
}

func readPEM(path, what string) (*pem.Block, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s %s: no PEM block", what, path)
	}
	return blk, nil
}

// LoadSigner reads a PEM private key (PKCS#8 "PRIVATE KEY", or SEC 1 "EC
// PRIVATE KEY"), as `kbsctl keygen` or `openssl genpkey` write them.
func LoadSigner(path string) (crypto.Signer, error) {
	blk, err := readPEM(path, "signing key")
	if err != nil {
		return nil, err
	}
	var key any
	switch blk.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("signing key %s: PEM type %q, want PRIVATE KEY", path, blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("signing key %s: %w", path, ErrKey)
	}
	if _, err := Algorithm(s.Public()); err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	return s, nil
}

// LoadPublicKey reads a PEM PKIX public key ("PUBLIC KEY").
func LoadPublicKey(path string) (crypto.PublicKey, error) {
	blk, err := readPEM(path, "reference-value signer")
	if err != nil {
		return nil, err
	}
	if blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("reference-value signer %s: PEM type %q, want PUBLIC KEY", path, blk.Type)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("reference-value signer %s: %w", path, err)
	}
	if _, err := Algorithm(pub); err != nil {
		return nil, fmt.Errorf("reference-value signer %s: %w", path, err)
	}
	return pub, nil
}
