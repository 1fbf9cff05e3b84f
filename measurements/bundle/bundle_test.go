package bundle

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

func testDoc() Document {
	return Document{
		Name:  "cloak guest image test",
		Image: Image{KernelSHA256: strings.Repeat("ab", 32), InitrdSHA256: strings.Repeat("cd", 32), Cmdline: "console=ttyS0"},
		Values: []Value{
			{Name: "snp_launch_measurement", Value: strings.Repeat("01", 48), Config: Config{TEE: "snp", FirmwareSHA256: strings.Repeat("ef", 32), VCPUs: 1, CPUType: "EPYC-Milan", GuestFeatures: 1}},
			{Name: "tdx_mr_td", Value: strings.Repeat("02", 48), Config: Config{TEE: "tdx", FirmwareSHA256: strings.Repeat("aa", 32), Memory: 2 << 30}},
		},
	}
}

func keys(t testing.TB) map[string]crypto.Signer {
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	return map[string]crypto.Signer{"Ed25519": ed, "P-256": p256, "P-384": p384}
}

func TestSignVerify(t *testing.T) {
	for name, k := range keys(t) {
		b, err := Sign(testDoc(), k)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		v, err := Verify(b, []crypto.PublicKey{other.Public(), k.Public()})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		kid, _ := KeyID(k.Public())
		if len(v.Document.Values) != 2 || v.Document.Values[0].Config.CPUType != "EPYC-Milan" || v.Document.Values[1].Config.Memory != 2<<30 ||
			!strings.HasPrefix(v.ID, "sha256:") || v.Signer != hex.EncodeToString(kid) {
			t.Errorf("%s: verified %+v", name, v)
		}
		// The ID names the document, not the signature: ECDSA signs
		// differently each time, the ID stays.
		b2, _ := Sign(testDoc(), k)
		v2, _ := Verify(b2, []crypto.PublicKey{k.Public()})
		if v2.ID != v.ID {
			t.Errorf("%s: two signatures over one document have IDs %s and %s", name, v.ID, v2.ID)
		}
	}
}

func TestRefusals(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	trusted := []crypto.PublicKey{key.Public()}
	good, err := Sign(testDoc(), key)
	if err != nil {
		t.Fatal(err)
	}
	bare, _ := encMode.Marshal(func() Document { d := testDoc(); d.Version = 1; return d }())
	strangerSigned, _ := Sign(testDoc(), stranger)

	// A COSE_Sign1 with the right headers and no signature.
	var msg cose.Sign1Message
	_ = msg.UnmarshalCBOR(good)
	msg.Signature = nil
	prot, _ := msg.Headers.MarshalProtected()
	noSig, _ := cbor.Marshal(cbor.Tag{Number: 18, Content: []any{prot, map[any]any{}, msg.Payload, []byte{}}})
	wrongType := signWith(t, key, map[any]any{cose.HeaderLabelContentType: "application/json"}, testDoc())
	tooMany := testDoc()
	for len(tooMany.Values) <= MaxValues {
		tooMany.Values = append(tooMany.Values, Value{Name: "x", Value: "00"})
	}
	badName := testDoc()
	badName.Values[0].Name = "SNP measurement"

	for _, c := range []struct {
		name string
		data []byte
		keys []crypto.PublicKey
		is   error
	}{
		{"empty", nil, trusted, ErrMalformed},
		{"bare document", bare, trusted, ErrUnsigned},
		{"no signature", noSig, trusted, ErrUnsigned},
		{"untrusted signer", strangerSigned, trusted, ErrUntrustedSigner},
		{"no trusted signers", good, nil, ErrUntrustedSigner},
		{"truncated", good[:len(good)-10], trusted, ErrMalformed},
		{"oversized", append(bytes.Clone(good), make([]byte, MaxSize)...), trusted, ErrTooLarge},
		{"wrong content type", wrongType, trusted, ErrMalformed},
		{"too many values", signWith(t, key, nil, tooMany), trusted, ErrMalformed},
		{"bad name", signWith(t, key, nil, badName), trusted, ErrMalformed},
		{"garbage", []byte("hello"), trusted, ErrMalformed},
	} {
		if _, err := Verify(c.data, c.keys); !errors.Is(err, c.is) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.is)
		}
	}
	// Every single flipped byte is refused: as malformed, or as a bad
	// signature, never accepted.
	for i := range good {
		b := bytes.Clone(good)
		b[i] ^= 0x01
		if v, err := Verify(b, trusted); err == nil {
			t.Fatalf("byte %d flipped: accepted %+v", i, v.Document)
		}
	}
	// A flipped byte in the payload's value text is a bad signature.
	i := bytes.Index(good, []byte(strings.Repeat("01", 48)))
	b := bytes.Clone(good)
	b[i] = '9'
	if _, err := Verify(b, trusted); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered value: err %v, want ErrBadSignature", err)
	}
}

// signWith signs a document bypassing Sign's validation, with extra
// protected headers, to make bundles Sign refuses to make.
func signWith(t *testing.T, key crypto.Signer, extra map[any]any, d Document) []byte {
	t.Helper()
	d.Version = Version
	payload, err := encMode.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := cose.NewSigner(cose.AlgorithmEdDSA, key)
	kid, _ := KeyID(key.Public())
	h := cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmEdDSA, cose.HeaderLabelContentType: ContentType, cose.HeaderLabelKeyID: kid}
	for k, v := range extra {
		h[k] = v
	}
	b, err := cose.Sign1(rand.Reader, s, cose.Headers{Protected: h}, payload, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSignRefusesInvalidDocuments(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	for name, mod := range map[string]func(*Document){
		"no values":             func(d *Document) { d.Values = nil },
		"space in value":        func(d *Document) { d.Values[0].Value = "ab cd" },
		"empty value":           func(d *Document) { d.Values[0].Value = "" },
		"upper-case hex digest": func(d *Document) { d.Values[0].Config.FirmwareSHA256 = strings.Repeat("AB", 32) },
		"bad digest":            func(d *Document) { d.Image.KernelSHA256 = "xyz" },
		"huge value":            func(d *Document) { d.Values[0].Value = strings.Repeat("00", MaxValueSize) },
	} {
		d := testDoc()
		mod(&d)
		if _, err := Sign(d, key); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	if _, err := Sign(testDoc(), rsaKey); !errors.Is(err, ErrKey) {
		t.Errorf("RSA key: err %v, want ErrKey", err)
	}
}

func TestLoadKeys(t *testing.T) {
	dir := t.TempDir()
	for name, k := range keys(t) {
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		pubDER, _ := x509.MarshalPKIXPublicKey(k.Public())
		priv, pub := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
		os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
		os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644)
		s, err := LoadSigner(priv)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		p, err := LoadPublicKey(pub)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, _ := Sign(testDoc(), s)
		if _, err := Verify(b, []crypto.PublicKey{p}); err != nil {
			t.Errorf("%s: loaded keys do not verify: %v", name, err)
		}
		if _, err := LoadPublicKey(priv); err == nil {
			t.Errorf("%s: a private key file was read as a public key", name)
		}
	}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	der, _ := x509.MarshalPKIXPublicKey(rsaKey.Public())
	p := filepath.Join(dir, "rsa.pub")
	os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	if _, err := LoadPublicKey(p); !errors.Is(err, ErrKey) {
		t.Errorf("RSA public key: err %v, want ErrKey", err)
	}
}

func FuzzParse(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	good, _ := Sign(testDoc(), key)
	f.Add(good)
	bare, _ := encMode.Marshal(testDoc())
	f.Add(bare)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		if err := p.Document.Validate(); err != nil {
			t.Fatalf("Parse returned a document Validate refuses: %v", err)
		}
		if _, err := Verify(b, []crypto.PublicKey{key.Public()}); err == nil && !bytes.Equal(b, good) {
			// Only re-encodings of the signed message may verify.
			if v, _ := Parse(good); v.ID != p.ID {
				t.Fatalf("a different document verified: %s", p.ID)
			}
		}
	})
}
