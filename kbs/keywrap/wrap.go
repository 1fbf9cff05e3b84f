// Package keywrap is the host-side half of Cloak's encrypted-image flow: an
// ocicrypt key provider (provider name "attestation-agent") that wraps a
// layer's encryption options with a key-encryption key (KEK) the KBS stores
// as a resource. The guest's attestation agent unwraps them after fetching
// that KEK from the KBS, so only attested guests can decrypt the image.
//
// The annotation format is the one Confidential Containers' coco_keyprovider
// writes, so images encrypted here are readable by CoCo guests and vice versa.
package keywrap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// ProviderName is the ocicrypt key provider name; the layer annotation is
// "org.opencontainers.image.enc.keys.provider.attestation-agent".
const ProviderName = "attestation-agent"

// WrapTypeA256GCM is the only wrap type Cloak produces: AES-256-GCM.
const WrapTypeA256GCM = "A256GCM"

// KEKSize is the size of the key-encryption key: AES-256.
const KEKSize = 32

// ivSize is the standard GCM nonce size, which coco_keyprovider also uses.
const ivSize = 12

// Annotation is the JSON document stored (base64-encoded by ocicrypt) in the
// layer annotation. WrappedData and IV are standard base64.
type Annotation struct {
	KID         string `json:"kid"`
	WrappedData string `json:"wrapped_data"`
	IV          string `json:"iv"`
	WrapType    string `json:"wrap_type"`
}

// Wrap seals optsData (ocicrypt's PrivateLayerBlockCipherOptions JSON) with
// AES-256-GCM under kek and a fresh random IV, and returns the annotation
// JSON. kid must be a KBS resource URI (kbs:///repo/type/tag) naming where the
// guest will find the same KEK.
func Wrap(kid string, kek, optsData []byte) ([]byte, error) {
	if _, _, err := kbstypes.ParseResourceURI(kid); err != nil {
		return nil, fmt.Errorf("key id: %w", err)
	}
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("key-encryption key is %d bytes, want %d (AES-256)", len(kek), KEKSize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("AES key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("AES-GCM: %w", err)
	}
	iv := make([]byte, ivSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("random IV: %w", err)
	}
	// No additional data: the guest-side unwrapper (and CoCo's) opens with
	// the KEK and IV only.
	sealed := aead.Seal(nil, iv, optsData, nil)
	out, err := json.Marshal(Annotation{
		KID:         kid,
		WrappedData: base64.StdEncoding.EncodeToString(sealed),
		IV:          base64.StdEncoding.EncodeToString(iv),
		WrapType:    WrapTypeA256GCM,
	})
	if err != nil {
		return nil, fmt.Errorf("encode annotation: %w", err)
	}
	return out, nil
}
