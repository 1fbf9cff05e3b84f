package keywrap

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// open is the guest's half of the format, written out here so the test does
// not trust Wrap to check itself.
func open(t *testing.T, kek, annotation []byte) []byte {
	t.Helper()
	var a wireAnnotation
	if err := json.Unmarshal(annotation, &a); err != nil {
		t.Fatalf("annotation is not JSON: %v", err)
	}
	if a.WrapType != "A256GCM" {
		t.Fatalf("wrap_type = %q, want A256GCM", a.WrapType)
	}
	iv, err := base64.StdEncoding.DecodeString(a.IV)
	if err != nil || len(iv) != 12 {
		t.Fatalf("iv %q: want base64 of 12 bytes (err %v)", a.IV, err)
	}
	sealed, err := base64.StdEncoding.DecodeString(a.WrappedData)
	if err != nil {
		t.Fatalf("wrapped_data: %v", err)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := aead.Open(nil, iv, sealed, nil)
	if err != nil {
		t.Fatalf("AES-GCM open: %v", err)
	}
	return plain
}

func TestWrapRoundTrip(t *testing.T) {
	kek := bytes.Repeat([]byte{7}, 32)
	opts := []byte(`{"cipher":"AES_256_CTR_HMAC_SHA256","cipheroptions":{"symkey":"c2VjcmV0"}}`)
	ann, err := Wrap("kbs:///default/image-kek/1", kek, opts)
	if err != nil {
		t.Fatal(err)
	}
	var a wireAnnotation
	if err := json.Unmarshal(ann, &a); err != nil {
		t.Fatal(err)
	}
	if a.KID != "kbs:///default/image-kek/1" {
		t.Errorf("kid = %q", a.KID)
	}
	if got := open(t, kek, ann); !bytes.Equal(got, opts) {
		t.Errorf("opened %q, want %q", got, opts)
	}
	if bytes.Contains(ann, []byte("c2VjcmV0")) {
		t.Error("annotation contains the plaintext options")
	}
	// A second wrap must use a fresh IV: reusing a GCM nonce under one KEK
	// would leak the XOR of two layers' options and the authentication key.
	ann2, err := Wrap("kbs:///default/image-kek/1", kek, opts)
	if err != nil {
		t.Fatal(err)
	}
	var a2 wireAnnotation
	if err := json.Unmarshal(ann2, &a2); err != nil {
		t.Fatal(err)
	}
	if a.IV == a2.IV {
		t.Error("two wraps used the same IV")
	}
	// The wrong KEK must not open it.
	wrong := bytes.Repeat([]byte{8}, 32)
	block, _ := aes.NewCipher(wrong)
	aead, _ := cipher.NewGCM(block)
	iv, _ := base64.StdEncoding.DecodeString(a.IV)
	sealed, _ := base64.StdEncoding.DecodeString(a.WrappedData)
	if _, err := aead.Open(nil, iv, sealed, nil); err == nil {
		t.Error("a different KEK opened the wrapped data")
	}
}

func TestWrapRejects(t *testing.T) {
	good := bytes.Repeat([]byte{1}, 32)
	tests := []struct {
		name, kid string
		kek       []byte
		wantErr   string
	}{
		{"short KEK", "kbs:///a/b/c", good[:16], "16 bytes, want 32"},
		{"long KEK", "kbs:///a/b/c", append(good, 0), "33 bytes, want 32"},
		{"kid without scheme", "a/b/c", good, "want kbs:///"},
		{"kid with two segments", "kbs:///a/b", good, "three segments"},
		{"kid escaping repository", "kbs:///../b/c", good, "not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Wrap(tc.kid, tc.kek, []byte("{}"))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// wireAnnotation is the annotation as coco_keyprovider documents it, with
// the byte fields as base64 strings: decoding Wrap's output into it checks
// the wire format independently of api/keyprovider's Go type.
type wireAnnotation struct {
	KID         string `json:"kid"`
	WrappedData string `json:"wrapped_data"`
	IV          string `json:"iv"`
	WrapType    string `json:"wrap_type"`
}
