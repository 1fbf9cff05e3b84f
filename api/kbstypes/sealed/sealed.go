// Package sealed is the wire format of Confidential Containers' sealed
// secrets: "sealed." followed by a compact JWS (RFC 7515) whose payload
// points at a secret (type "vault", e.g. a KBS resource) or carries one
// wrapped (type "envelope"). It follows guest-components'
// confidential-data-hub (hub/src/secret/mod.rs and layout/, docs/
// SEALED_SECRET.md): header {"alg":"ES256","kid":...}, base64url without
// padding for all three parts, an ES256 signature (raw r||s) over
// "<header>.<payload>", verified in the guest with the P-256 key the kid
// names (a KBS resource URI or a local credential). It parses, builds and
// checks the string; fetching or unwrapping the secret is not here.
package sealed

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// Format constants, as confidential-data-hub spells them.
const (
	Prefix       = "sealed."
	Version      = "0.1.0"
	TypeVault    = "vault"
	TypeEnvelope = "envelope"
	ProviderKBS  = "kbs"
	AlgES256     = "ES256"
	// MaxSize bounds a sealed string; real ones are well under 4 KiB.
	MaxSize = 64 << 10
	// UnsignedHeader and UnsignedSignature are the placeholders CoCo's docs
	// and tools write for guests that skip verification
	// (SKIP_SEALED_SECRET_VERIFICATION=true in confidential-data-hub).
	UnsignedHeader    = "fakejwsheader"
	UnsignedSignature = "fakesignature"
)

// ErrUnsigned is returned by Verify for the unsigned placeholder form.
var ErrUnsigned = errors.New("sealed secret is unsigned (" + UnsignedHeader + "): only a guest that skips verification accepts it")

// Secret is the JWS payload. Vault secrets use Name, Provider,
// ProviderSettings and Annotations; envelope secrets use all fields but Name.
type Secret struct {
	Version          string
	Type             string
	Name             string // vault: the secret's id; for provider "kbs" a kbs:///repo/type/tag URI
	Provider         string
	ProviderSettings map[string]any
	Annotations      map[string]any
	KeyID            string // envelope: the sealing key in the provider
	EncryptedKey     string // envelope: base64 of the wrapped data key
	EncryptedData    string // envelope: base64 of the ciphertext
	WrapType         string // envelope: A256GCM or A256CTR
	IV               string // envelope: base64
}

// Vault returns a vault secret pointing at a KBS resource.
func Vault(p kbstypes.ResourcePath) Secret {
	return Secret{Version: Version, Type: TypeVault, Name: p.URI(), Provider: ProviderKBS}
}

// Header is the JWS protected header.
type Header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// Sealed is a parsed sealed secret.
type Sealed struct {
	Header    *Header // nil for the unsigned placeholder form
	Secret    Secret
	Signature []byte
	// signingInput is "<header>.<payload>" exactly as received.
	signingInput string
}

// Resource returns the KBS resource a vault secret of provider "kbs" names.
func (s Secret) Resource() (kbstypes.ResourcePath, error) {
	if s.Type != TypeVault || s.Provider != ProviderKBS {
		return kbstypes.ResourcePath{}, fmt.Errorf("sealed secret is %s/%s, not a vault secret of provider %q", s.Type, s.Provider, ProviderKBS)
	}
	return ParseResourceURI(s.Name)
}

// ParseResourceURI parses "kbs:///repo/type/tag" (a host, as in
// "kbs://host/repo/type/tag", is accepted and ignored, as CoCo does).
func ParseResourceURI(uri string) (kbstypes.ResourcePath, error) {
	_, p, err := kbstypes.ParseResourceURI(uri)
	return p, err
}

// b64 is confidential-data-hub's URL_SAFE_NO_PAD: no padding, no stray bits.
var b64 = base64.RawURLEncoding.Strict()

func decodePart(name, s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, fmt.Errorf("sealed secret %s: line break in base64url", name)
	}
	b, err := b64.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("sealed secret %s: not base64url without padding: %w", name, err)
	}
	return b, nil
}

// Parse parses a sealed secret string and checks its payload; it does not
// check the signature (Verify does, with the key Header.Kid names).
func Parse(s string) (*Sealed, error) {
	if len(s) > MaxSize {
		return nil, fmt.Errorf("sealed secret is %d bytes, limit is %d", len(s), MaxSize)
	}
	rest, ok := strings.CutPrefix(s, Prefix)
	if !ok {
		return nil, fmt.Errorf("sealed secret: missing prefix %q", Prefix)
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("sealed secret: %d dot-separated parts after %q, want 3 (<header>.<payload>.<signature>)", len(parts), Prefix)
	}
	out := &Sealed{signingInput: parts[0] + "." + parts[1]}
	if parts[0] != UnsignedHeader || parts[2] != UnsignedSignature {
		h, err := parseHeader(parts[0])
		if err != nil {
			return nil, err
		}
		if out.Signature, err = decodePart("signature", parts[2]); err != nil {
			return nil, err
		}
		if len(out.Signature) != 64 {
			return nil, fmt.Errorf("sealed secret signature is %d bytes, want 64 (ES256 r||s)", len(out.Signature))
		}
		out.Header = h
	}
	payload, err := decodePart("payload", parts[1])
	if err != nil {
		return nil, err
	}
	if out.Secret, err = decodeSecret(payload); err != nil {
		return nil, err
	}
	return out, nil
}

func parseHeader(part string) (*Header, error) {
	raw, err := decodePart("header", part)
	if err != nil {
		return nil, err
	}
	var h Header
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("sealed secret header is not a JSON object: %w", err)
	}
	if h.Alg != AlgES256 {
		return nil, fmt.Errorf("sealed secret header: alg %q, want %q", h.Alg, AlgES256)
	}
	if h.Kid == "" {
		return nil, errors.New("sealed secret header: no kid naming the verification key")
	}
	return &h, nil
}

// wire is the payload with presence visible, to name missing fields.
type wire struct {
	Version          *string         `json:"version"`
	Type             *string         `json:"type"`
	Name             *string         `json:"name"`
	Provider         *string         `json:"provider"`
	ProviderSettings *map[string]any `json:"provider_settings"`
	Annotations      *map[string]any `json:"annotations"`
	KeyID            *string         `json:"key_id"`
	EncryptedKey     *string         `json:"encrypted_key"`
	EncryptedData    *string         `json:"encrypted_data"`
	WrapType         *string         `json:"wrap_type"`
	IV               *string         `json:"iv"`
}

func decodeSecret(payload []byte) (Secret, error) {
	var w wire
	if err := json.Unmarshal(payload, &w); err != nil {
		return Secret{}, fmt.Errorf("sealed secret payload is not a JSON object: %w", err)
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	obj := func(p *map[string]any) map[string]any {
		if p == nil {
			return nil
		}
		return *p
	}
	s := Secret{
		Version: str(w.Version), Type: str(w.Type), Name: str(w.Name), Provider: str(w.Provider),
		ProviderSettings: obj(w.ProviderSettings), Annotations: obj(w.Annotations),
		KeyID: str(w.KeyID), EncryptedKey: str(w.EncryptedKey), EncryptedData: str(w.EncryptedData),
		WrapType: str(w.WrapType), IV: str(w.IV),
	}
	// confidential-data-hub's serde structs require every field but
	// nothing more, and refuse a version other than 0.1.0.
	missing := func(name string) error {
		return fmt.Errorf("sealed secret payload (type %q): field %q is missing", s.Type, name)
	}
	if w.Version == nil {
		return Secret{}, missing("version")
	}
	if w.Type == nil {
		return Secret{}, missing("type")
	}
	if w.ProviderSettings == nil && (s.Type == TypeVault || s.Type == TypeEnvelope) {
		return Secret{}, missing("provider_settings")
	}
	if w.Annotations == nil && (s.Type == TypeVault || s.Type == TypeEnvelope) {
		return Secret{}, missing("annotations")
	}
	switch s.Type {
	case TypeVault:
		if w.Name == nil {
			return Secret{}, missing("name")
		}
	case TypeEnvelope:
		for name, p := range map[string]*string{"key_id": w.KeyID, "encrypted_key": w.EncryptedKey, "encrypted_data": w.EncryptedData, "wrap_type": w.WrapType, "iv": w.IV} {
			if p == nil {
				return Secret{}, missing(name)
			}
		}
	}
	if w.Provider == nil && (s.Type == TypeVault || s.Type == TypeEnvelope) {
		return Secret{}, missing("provider")
	}
	if err := s.check(); err != nil {
		return Secret{}, err
	}
	return s, nil
}

// check applies the rules Parse and Seal share.
func (s Secret) check() error {
	if s.Version != Version {
		return fmt.Errorf("sealed secret version %q, only %q is supported", s.Version, Version)
	}
	switch s.Type {
	case TypeVault:
		if s.Name == "" {
			return errors.New("sealed vault secret: empty name")
		}
		if s.Provider == ProviderKBS {
			if _, err := ParseResourceURI(s.Name); err != nil {
				return fmt.Errorf("sealed vault secret of provider kbs: bad resource URI: %w", err)
			}
		}
	case TypeEnvelope:
		if s.WrapType != "A256GCM" && s.WrapType != "A256CTR" {
			return fmt.Errorf("sealed envelope secret: wrap_type %q, want A256GCM (or A256CTR)", s.WrapType)
		}
	default:
		return fmt.Errorf("sealed secret: unknown type %q, want %q or %q", s.Type, TypeVault, TypeEnvelope)
	}
	if s.Provider == "" {
		return fmt.Errorf("sealed %s secret: empty provider", s.Type)
	}
	return nil
}

// payload encodes s with confidential-data-hub's field order and
// serde_json's escaping (no HTML escapes), maps sorted as serde_json's are.
func (s Secret) payload() ([]byte, error) {
	orEmpty := func(m map[string]any) map[string]any {
		if m == nil {
			return map[string]any{}
		}
		return m
	}
	var v any
	switch s.Type {
	case TypeVault:
		v = struct {
			Version          string         `json:"version"`
			Type             string         `json:"type"`
			Name             string         `json:"name"`
			Provider         string         `json:"provider"`
			ProviderSettings map[string]any `json:"provider_settings"`
			Annotations      map[string]any `json:"annotations"`
		}{s.Version, s.Type, s.Name, s.Provider, orEmpty(s.ProviderSettings), orEmpty(s.Annotations)}
	default:
		v = struct {
			Version          string         `json:"version"`
			Type             string         `json:"type"`
			KeyID            string         `json:"key_id"`
			EncryptedKey     string         `json:"encrypted_key"`
			EncryptedData    string         `json:"encrypted_data"`
			WrapType         string         `json:"wrap_type"`
			IV               string         `json:"iv"`
			Provider         string         `json:"provider"`
			ProviderSettings map[string]any `json:"provider_settings"`
			Annotations      map[string]any `json:"annotations"`
		}{s.Version, s.Type, s.KeyID, s.EncryptedKey, s.EncryptedData, s.WrapType, s.IV, s.Provider, orEmpty(s.ProviderSettings), orEmpty(s.Annotations)}
	}
	return compactJSON(v)
}

func compactJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// Seal returns the sealed string for s signed with key (P-256) under kid,
// as confidential-data-hub's `secret seal` builds it.
func Seal(s Secret, key *ecdsa.PrivateKey, kid string) (string, error) {
	if key == nil || key.Curve != elliptic.P256() {
		return "", errors.New("seal: the signing key must be an EC P-256 private key (ES256)")
	}
	if kid == "" {
		return "", errors.New("seal: empty kid; the guest finds the verification key by it")
	}
	if err := s.check(); err != nil {
		return "", err
	}
	payload, err := s.payload()
	if err != nil {
		return "", fmt.Errorf("seal: encode payload: %w", err)
	}
	header, err := compactJSON(Header{Alg: AlgES256, Kid: kid})
	if err != nil {
		return "", fmt.Errorf("seal: encode header: %w", err)
	}
	input := b64.EncodeToString(header) + "." + b64.EncodeToString(payload)
	digest := sha256.Sum256([]byte(input))
	r, sig, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", fmt.Errorf("seal: sign: %w", err)
	}
	raw := make([]byte, 64)
	r.FillBytes(raw[:32])
	sig.FillBytes(raw[32:])
	return Prefix + input + "." + b64.EncodeToString(raw), nil
}

// SealUnsigned returns the unsigned placeholder form CoCo's docs and tools
// write ("sealed.fakejwsheader.<payload>.fakesignature"); only guests that
// skip verification accept it.
func SealUnsigned(s Secret) (string, error) {
	if err := s.check(); err != nil {
		return "", err
	}
	payload, err := s.payload()
	if err != nil {
		return "", fmt.Errorf("seal: encode payload: %w", err)
	}
	return Prefix + UnsignedHeader + "." + b64.EncodeToString(payload) + "." + UnsignedSignature, nil
}

// Verify checks the ES256 signature with pub, the P-256 key Header.Kid
// names.
func (s *Sealed) Verify(pub *ecdsa.PublicKey) error {
	if s.Header == nil {
		return ErrUnsigned
	}
	if pub == nil || pub.Curve != elliptic.P256() {
		return errors.New("verify sealed secret: the verification key must be an EC P-256 public key")
	}
	digest := sha256.Sum256([]byte(s.signingInput))
	r := new(big.Int).SetBytes(s.Signature[:32])
	sig := new(big.Int).SetBytes(s.Signature[32:])
	if !ecdsa.Verify(pub, digest[:], r, sig) {
		return fmt.Errorf("sealed secret signature does not verify with the key of kid %q", s.Header.Kid)
	}
	return nil
}
