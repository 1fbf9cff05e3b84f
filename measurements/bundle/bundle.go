// Package bundle is the signed reference-value bundle that cloak-image build
// writes (reference-values.cose) and a KBS imports: a COSE_Sign1 (RFC 9052)
// over a CBOR document listing each reference value with its name, the launch
// configuration it belongs to and the image's digests.
//
// Parse reads a bundle without trusting it, with size and count limits on
// every field; Verify parses and checks the signature against the signers the
// caller trusts. A KBS stores values only from Verify.
package bundle

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// ContentType is the COSE content type of the payload; Verify refuses any
// other, so a COSE_Sign1 made for something else by the same key is not
// taken for reference values.
const ContentType = "application/vnd.cloak.reference-values+cbor"

// Version is the document version this package writes and reads.
const Version = 1

// Limits on what Parse accepts.
const (
	MaxSize       = 1 << 20 // bytes of the whole bundle
	MaxValues     = 4096
	MaxValueSize  = 1024 // bytes of one value, as the KBS's reference-value limit
	MaxStringSize = 4096 // the command line and other text
)

var (
	nameRE = regexp.MustCompile(`^[a-z0-9_]{1,64}$`)
	// Measurements are lowercase hex; other reference values (an SVN) are
	// short tokens.
	valueRE = regexp.MustCompile(`^[\x21-\x7e]+$`)
)

// Document is the signed payload.
type Document struct {
	Version int     `cbor:"version"`
	Name    string  `cbor:"name"` // what was built, for humans: "cloak guest image 6.12.95-1~bpo12+1"
	Image   Image   `cbor:"image"`
	Values  []Value `cbor:"values"`
}

// Image identifies the boot artifacts the values were computed from.
type Image struct {
	KernelSHA256 string `cbor:"kernel_sha256"`
	InitrdSHA256 string `cbor:"initrd_sha256,omitempty"`
	Cmdline      string `cbor:"cmdline"`
}

// Value is one reference value and the launch configuration it belongs to.
type Value struct {
	Name   string `cbor:"name"`  // e.g. snp_launch_measurement, tdx_mr_td
	Value  string `cbor:"value"` // measurements in lowercase hex
	Config Config `cbor:"config"`
}

// Config is the launch configuration of a value.
type Config struct {
	TEE            string `cbor:"tee"`
	FirmwareSHA256 string `cbor:"firmware_sha256"`
	VCPUs          int    `cbor:"vcpus,omitempty"`
	CPUType        string `cbor:"cpu_type,omitempty"`
	GuestFeatures  uint64 `cbor:"guest_features,omitempty"`
	Memory         uint64 `cbor:"memory,omitempty"`
}

// Errors, matched with errors.Is.
var (
	ErrTooLarge        = errors.New("reference-value bundle too large")
	ErrMalformed       = errors.New("malformed reference-value bundle")
	ErrUnsigned        = errors.New("reference-value bundle is not signed")
	ErrUntrustedSigner = errors.New("reference-value bundle signed by a key that is not trusted")
	ErrBadSignature    = errors.New("reference-value bundle signature does not verify")
)

var (
	encMode, _ = cbor.CoreDetEncOptions().EncMode()
	decMode, _ = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		MaxNestedLevels:   8,
		MaxArrayElements:  MaxValues,
		MaxMapPairs:       32,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
)

func isHex(s string) bool {
	if len(s)%2 != 0 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && s == strings.ToLower(s)
}

// Validate checks a document against the limits and formats Parse enforces.
func (d *Document) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
	}
	if d.Version != Version {
		return bad("version %d, this KBS reads version %d", d.Version, Version)
	}
	if len(d.Name) > MaxStringSize || len(d.Image.Cmdline) > MaxStringSize {
		return bad("name or command line longer than %d bytes", MaxStringSize)
	}
	for _, h := range []string{d.Image.KernelSHA256, d.Image.InitrdSHA256} {
		if h != "" && (len(h) != 64 || !isHex(h)) {
			return bad("image digest %q is not a lowercase hex SHA-256", h)
		}
	}
	if len(d.Values) == 0 {
		return bad("no values")
	}
	if len(d.Values) > MaxValues {
		return bad("%d values, limit %d", len(d.Values), MaxValues)
	}
	for i, v := range d.Values {
		if !nameRE.MatchString(v.Name) {
			return bad("value %d: name %q: use 1-64 characters of [a-z0-9_]", i, v.Name)
		}
		if !valueRE.MatchString(v.Value) || len(v.Value) > MaxValueSize {
			return bad("value %d (%s): not 1-%d bytes of printable ASCII without spaces", i, v.Name, MaxValueSize)
		}
		if len(v.Config.TEE) > 64 || len(v.Config.CPUType) > 64 || (v.Config.FirmwareSHA256 != "" && (len(v.Config.FirmwareSHA256) != 64 || !isHex(v.Config.FirmwareSHA256))) {
			return bad("value %d (%s): malformed configuration", i, v.Name)
		}
	}
	return nil
}

// Parsed is a decoded bundle; nothing in it is trusted yet.
type Parsed struct {
	Document Document
	// ID names the bundle: "sha256:" and the hex SHA-256 of the signed
	// payload, the same for every signature over the same document.
	ID        string
	Algorithm cose.Algorithm
	KeyID     []byte // the signer's key id (KeyID of its public key), if given
	msg       *cose.Sign1Message
}

// Parse decodes a bundle without checking its signature.
func Parse(data []byte) (*Parsed, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), MaxSize)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformed)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(data); err != nil {
		if errors.Is(err, cose.ErrEmptySignature) {
			return nil, fmt.Errorf("%w: empty signature", ErrUnsigned)
		}
		var d Document
		if decMode.Unmarshal(data, &d) == nil {
			return nil, fmt.Errorf("%w: a bare CBOR document, not a COSE_Sign1 over it (sign it: cloak-image build --sign-key KEY.pem)", ErrUnsigned)
		}
		return nil, fmt.Errorf("%w: not a COSE_Sign1: %v", ErrMalformed, err)
	}
	if len(msg.Signature) == 0 {
		return nil, fmt.Errorf("%w: empty signature", ErrUnsigned)
	}
	alg, err := msg.Headers.Protected.Algorithm()
	if err != nil {
		return nil, fmt.Errorf("%w: no signature algorithm in the protected header: %v", ErrUnsigned, err)
	}
	if ct, ok := msg.Headers.Protected[cose.HeaderLabelContentType]; !ok || ct != ContentType {
		return nil, fmt.Errorf("%w: content type %v, want %q", ErrMalformed, ct, ContentType)
	}
	if msg.Payload == nil {
		return nil, fmt.Errorf("%w: detached payload", ErrMalformed)
	}
	p := &Parsed{Algorithm: alg, msg: &msg}
	if kid, ok := msg.Headers.Protected[cose.HeaderLabelKeyID].([]byte); ok {
		p.KeyID = kid
	}
	if err := decMode.Unmarshal(msg.Payload, &p.Document); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	if err := p.Document.Validate(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(msg.Payload)
	p.ID = "sha256:" + hex.EncodeToString(sum[:])
	return p, nil
}

// Verified is a bundle whose signature verified with a trusted key.
type Verified struct {
	*Parsed
	Signer string // KeyIDString of the key that verified it
}

// Verify parses data and checks its signature with the trusted keys: those
// whose key id matches the bundle's, or all of them when it names none.
func Verify(data []byte, trusted []crypto.PublicKey) (*Verified, error) {
	p, err := Parse(data)
	if err != nil {
		return nil, err
	}
	if len(trusted) == 0 {
		return nil, fmt.Errorf("%w: no signer is trusted (start the KBS with --reference-value-signer PUB.pem)", ErrUntrustedSigner)
	}
	var tried int
	var lastErr error
	for _, k := range trusted {
		kid, err := KeyID(k)
		if err != nil {
			return nil, err
		}
		if p.KeyID != nil && !bytes.Equal(kid, p.KeyID) {
			continue
		}
		alg, err := Algorithm(k)
		if err != nil {
			return nil, err
		}
		if alg != p.Algorithm {
			continue
		}
		tried++
		v, err := cose.NewVerifier(alg, k)
		if err != nil {
			return nil, err
		}
		if err := p.msg.Verify(nil, v); err != nil {
			lastErr = err
			continue
		}
		return &Verified{Parsed: p, Signer: hex.EncodeToString(kid)}, nil
	}
	if tried == 0 {
		return nil, fmt.Errorf("%w: key id %x (%v) is none of the %d trusted signers", ErrUntrustedSigner, p.KeyID, p.Algorithm, len(trusted))
	}
	return nil, fmt.Errorf("%w: %v (changed after signing, or signed by another key with the same id)", ErrBadSignature, lastErr)
}

// Sign validates d and returns the COSE_Sign1 bundle signed with key
// (Ed25519, or ECDSA P-256/P-384), naming the key by its KeyID.
func Sign(d Document, key crypto.Signer) ([]byte, error) {
	if d.Version == 0 {
		d.Version = Version
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	alg, err := Algorithm(key.Public())
	if err != nil {
		return nil, err
	}
	kid, err := KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	payload, err := encMode.Marshal(d)
	if err != nil {
		return nil, err
	}
	s, err := cose.NewSigner(alg, key)
	if err != nil {
		return nil, err
	}
	h := cose.Headers{Protected: cose.ProtectedHeader{
		cose.HeaderLabelAlgorithm:   alg,
		cose.HeaderLabelContentType: ContentType,
		cose.HeaderLabelKeyID:       kid,
	}}
	return cose.Sign1(rand.Reader, s, h, payload, nil)
}
