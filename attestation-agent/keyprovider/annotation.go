package keyprovider

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// WrapTypeA256GCM is the only wrap type the agent opens.
const WrapTypeA256GCM = "A256GCM"

const (
	// MaxAnnotation bounds the annotation a layer may carry. A real one is
	// a few hundred bytes (wrapped PrivateLayerBlockCipherOptions).
	MaxAnnotation = 64 << 10
	gcmNonceSize  = 12
)

// Annotation is CoCo's "AnnotationPacket": what the layer annotation
// org.opencontainers.image.enc.keys.provider.attestation-agent holds.
type Annotation struct {
	// Kid names the KEK in the KBS, "kbs:///repo/type/tag".
	Kid string `json:"kid"`
	// WrappedData is the AES-256-GCM sealed layer options (with tag).
	WrappedData []byte `json:"wrapped_data"`
	// IV is the 12-byte GCM nonce.
	IV       []byte `json:"iv"`
	WrapType string `json:"wrap_type"`
}

// ParseAnnotation reads an annotation packet as ocicrypt hands it over: the
// JSON itself, or its base64 (standard encoding). It returns the packet and
// the KBS resource that holds its key.
func ParseAnnotation(b []byte) (Annotation, kbstypes.ResourcePath, error) {
	if len(b) > MaxAnnotation {
		return Annotation{}, kbstypes.ResourcePath{}, fmt.Errorf("annotation is %d bytes, limit is %d", len(b), MaxAnnotation)
	}
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] != '{' {
		decoded, err := base64.StdEncoding.DecodeString(string(b))
		if err != nil {
			return Annotation{}, kbstypes.ResourcePath{}, fmt.Errorf("annotation is neither JSON nor base64 of JSON: %w", err)
		}
		b = decoded
	}
	var a Annotation
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return Annotation{}, kbstypes.ResourcePath{}, fmt.Errorf("annotation: want {\"kid\",\"wrapped_data\",\"iv\",\"wrap_type\"}: %w", err)
	}
	if dec.More() {
		return Annotation{}, kbstypes.ResourcePath{}, fmt.Errorf("annotation: trailing data after the JSON object")
	}
	_, path, err := kbstypes.ParseResourceURI(a.Kid)
	if err != nil {
		return Annotation{}, kbstypes.ResourcePath{}, fmt.Errorf("annotation kid: %w", err)
	}
	if a.WrapType != WrapTypeA256GCM {
		return Annotation{}, kbstypes.ResourcePath{}, fmt.Errorf("annotation wrap_type %q not supported: want %s", a.WrapType, WrapTypeA256GCM)
	}
	if len(a.IV) != gcmNonceSize {
		return Annotation{}, kbstypes.ResourcePath{}, fmt.Errorf("annotation iv is %d bytes, want %d", len(a.IV), gcmNonceSize)
	}
	if len(a.WrappedData) == 0 {
		return Annotation{}, kbstypes.ResourcePath{}, fmt.Errorf("annotation wrapped_data is empty")
	}
	return a, path, nil
}
