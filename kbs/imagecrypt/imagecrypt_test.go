package imagecrypt

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/blockcipher"
	ocicfg "github.com/containers/ocicrypt/config"
	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cloak-containers/cloak/kbs/keywrap"
)

const testKeyID = "kbs:///default/image-key/test"

// startRegistry serves an in-memory OCI registry on loopback.
func startRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func ref(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tarOf is an uncompressed layer holding one file.
func tarOf(t *testing.T, path, body string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: 0o644, Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(tw, body); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func layerOf(t *testing.T, tb []byte, opts ...tarball.LayerOption) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tb)), nil }, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf builds an image of the given manifest type for os/arch.
func imageOf(t *testing.T, manifestType types.MediaType, arch string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, manifestType)
	if manifestType == types.DockerManifestSchema2 {
		img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
	} else {
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	}
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Cmd = []string{"/bin/true"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

func writeKEK(t *testing.T, kek []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "image.kek")
	if err := os.WriteFile(p, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newKEK(t *testing.T) ([]byte, string) {
	t.Helper()
	kek := make([]byte, keywrap.KEKSize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	return kek, writeKEK(t, kek)
}

// testUnwrapper plays the guest's attestation agent for ocicrypt: it opens
// the annotation with a KEK it already holds. It is written from the
// annotation format (kid, wrapped_data, iv, wrap_type; AES-256-GCM, no AAD),
// not with keywrap's code, so that it checks keywrap too.
type testUnwrapper struct {
	mu   sync.Mutex
	kek  []byte
	kid  string // of the last unwrapped annotation
	opts []byte // the last unwrapped options
}

func (u *testUnwrapper) UnwrapKey(_ *ocicfg.DecryptConfig, annotation []byte) ([]byte, error) {
	var a struct {
		Kid         string `json:"kid"`
		WrappedData string `json:"wrapped_data"`
		IV          string `json:"iv"`
		WrapType    string `json:"wrap_type"`
	}
	if err := json.Unmarshal(annotation, &a); err != nil {
		return nil, err
	}
	if a.WrapType != "A256GCM" {
		return nil, errors.New("wrap_type " + a.WrapType)
	}
	iv, err := base64.StdEncoding.DecodeString(a.IV)
	if err != nil {
		return nil, err
	}
	sealed, err := base64.StdEncoding.DecodeString(a.WrappedData)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	block, err := aes.NewCipher(u.kek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	u.kid = a.Kid
	u.opts, err = gcm.Open(nil, iv, sealed, nil)
	return u.opts, err
}

func (u *testUnwrapper) WrapKeys(*ocicfg.EncryptConfig, []byte) ([]byte, error) { return nil, nil }
func (u *testUnwrapper) GetAnnotationID() string                                { return KeyAnnotation }
func (u *testUnwrapper) NoPossibleKeys(map[string][][]byte) bool                { return false }
func (u *testUnwrapper) GetPrivateKeys(map[string][][]byte) [][]byte            { return [][]byte{{1}} }
func (u *testUnwrapper) GetKeyIdsFromPacket(string) ([]uint64, error)           { return nil, nil }
func (u *testUnwrapper) GetRecipients(string) ([]string, error)                 { return nil, nil }

// unwrapper is registered once: ocicrypt's key wrappers are process-wide.
// Encrypt does not use that registry, so this does not affect it.
var (
	unwrapper    = &testUnwrapper{}
	registerOnce sync.Once
)

// decryptWith decrypts an encrypted layer with ocicrypt.DecryptLayer, the
// unwrapper holding kek.
func decryptWith(t *testing.T, kek []byte, l v1.Layer, desc v1.Descriptor) (plain []byte, kid string, err error) {
	t.Helper()
	registerOnce.Do(func() { ocicrypt.RegisterKeyWrapper("provider."+keywrap.ProviderName, unwrapper) })
	unwrapper.mu.Lock()
	unwrapper.kek, unwrapper.kid = kek, ""
	unwrapper.mu.Unlock()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	od := ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: digest.Digest(desc.Digest.String()), Size: desc.Size, Annotations: desc.Annotations}
	r, _, err := ocicrypt.DecryptLayer(&ocicfg.DecryptConfig{}, rc, od, false)
	if err != nil {
		return nil, "", err
	}
	plain, err = io.ReadAll(r) // the HMAC is checked at EOF
	if err != nil {
		return nil, "", err
	}
	unwrapper.mu.Lock()
	defer unwrapper.mu.Unlock()
	// ocicrypt.DecryptLayer does not return the sealed digest; the guest
	// checks it (guest-image/pull/decrypt.go), so check it here.
	var priv blockcipher.PrivateLayerBlockCipherOptions
	if err := json.Unmarshal(unwrapper.opts, &priv); err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(plain); got != priv.Digest {
		t.Errorf("decrypted blob has digest %s, the wrapped options say %q", got, priv.Digest)
	}
	return plain, unwrapper.kid, nil
}

// uncompress returns the tar inside a decrypted layer blob of mediaType.
func uncompress(t *testing.T, blob []byte, mediaType types.MediaType) []byte {
	t.Helper()
	base := types.MediaType(strings.TrimSuffix(string(mediaType), "+encrypted"))
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(blob)), nil }, tarball.WithMediaType(base))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkEncrypted asserts that the image at dst is src's with every layer
// encrypted for kek under testKeyID, and that decrypting gives back the
// source layers.
func checkEncrypted(t *testing.T, src v1.Image, dst string, kek []byte, res *Result) {
	t.Helper()
	img, err := remote.Image(ref(t, dst))
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("manifest %s with config %s, want OCI", m.MediaType, m.Config.MediaType)
	}
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if res.ManifestDigest != digest || !strings.HasSuffix(res.Image, "@"+digest.String()) {
		t.Errorf("result %+v, registry has manifest %s", res, digest)
	}
	srcConfig, _ := src.RawConfigFile()
	dstConfig, _ := img.RawConfigFile()
	if !bytes.Equal(srcConfig, dstConfig) {
		t.Error("config was not copied byte for byte")
	}
	srcManifest, _ := src.Manifest()
	cf, _ := src.ConfigFile()
	if len(m.Layers) != len(srcManifest.Layers) || len(res.Layers) != len(m.Layers) {
		t.Fatalf("%d layers pushed, %d in result, source has %d", len(m.Layers), len(res.Layers), len(srcManifest.Layers))
	}
	for i, desc := range m.Layers {
		sd := srcManifest.Layers[i]
		if !strings.HasSuffix(string(desc.MediaType), "+encrypted") || !strings.HasPrefix(string(desc.MediaType), "application/vnd.oci.image.layer.v1.tar") {
			t.Errorf("layer %d media type %s", i, desc.MediaType)
		}
		if desc.Annotations[KeyAnnotation] == "" || desc.Annotations[PubOptsAnnotation] == "" {
			t.Fatalf("layer %d annotations %v", i, desc.Annotations)
		}
		want := Layer{Digest: sd.Digest, EncryptedDigest: desc.Digest, Size: sd.Size, EncryptedSize: desc.Size}
		if got := res.Layers[i]; got.Digest != want.Digest || got.EncryptedDigest != want.EncryptedDigest || got.Size != want.Size || got.EncryptedSize != want.EncryptedSize {
			t.Errorf("result layer %d = %+v, want %+v", i, got, want)
		}
		l, err := img.LayerByDigest(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		srcLayer, _ := src.LayerByDigest(sd.Digest)
		srcBlob := readAll(t, srcLayer.Compressed)
		encBlob := readAll(t, l.Compressed)
		if bytes.Contains(encBlob, uncompress(t, srcBlob, sd.MediaType)[512:540]) {
			t.Errorf("layer %d: encrypted blob contains plaintext", i)
		}

		plain, kid, err := decryptWith(t, kek, l, desc)
		if err != nil {
			t.Fatalf("decrypt layer %d: %v", i, err)
		}
		if kid != testKeyID {
			t.Errorf("layer %d wrapped under kid %q, want %q", i, kid, testKeyID)
		}
		if !bytes.Equal(plain, srcBlob) {
			t.Errorf("layer %d: decrypted blob differs from the source blob", i)
		}
		diffID, _, _ := v1.SHA256(bytes.NewReader(uncompress(t, plain, desc.MediaType)))
		if diffID != cf.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: decrypted diff_id %s, config says %s", i, diffID, cf.RootFS.DiffIDs[i])
		}

		other := make([]byte, 32)
		if _, _, err := decryptWith(t, other, l, desc); err == nil {
			t.Errorf("layer %d decrypted with another KEK", i)
		}
	}
}

func readAll(t *testing.T, open func() (io.ReadCloser, error)) []byte {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func push(t *testing.T, where string, img v1.Image) {
	t.Helper()
	if err := remote.Write(ref(t, where), img); err != nil {
		t.Fatal(err)
	}
}

func TestEncryptTwoLayers(t *testing.T) {
	host := startRegistry(t)
	secret := strings.Repeat("the secret recipe ", 100)
	src := imageOf(t, types.OCIManifestSchema1, "amd64",
		layerOf(t, tarOf(t, "etc/recipe.txt", secret), tarball.WithMediaType(types.OCILayer)),
		layerOf(t, tarOf(t, "etc/other.txt", secret+"2"), tarball.WithMediaType(types.OCILayerZStd), tarball.WithCompression(compression.ZStd)))
	push(t, host+"/demo/hello:plain", src)
	kek, kekPath := newKEK(t)

	var progress []string
	res, err := Encrypt(context.Background(), ref(t, host+"/demo/hello:plain"), ref(t, host+"/demo/hello:encrypted"), Options{
		KeyID: testKeyID, KEKFile: kekPath,
		Progress: func(i, n int, l Layer) {
			progress = append(progress, string(rune('0'+i))+"/"+string(rune('0'+n))+" "+l.Digest.String())
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	checkEncrypted(t, src, host+"/demo/hello:encrypted", kek, res)
	m, _ := src.Manifest()
	if want := []string{"0/2 " + m.Layers[0].Digest.String(), "1/2 " + m.Layers[1].Digest.String()}; strings.Join(progress, ",") != strings.Join(want, ",") {
		t.Errorf("progress %v, want %v", progress, want)
	}
	if want := host + "/demo/hello@" + res.ManifestDigest.String(); res.Image != want {
		t.Errorf("image = %q, want %q", res.Image, want)
	}
	// The source is untouched.
	if got, err := remote.Image(ref(t, host+"/demo/hello:plain")); err != nil {
		t.Fatal(err)
	} else if d1, _ := got.Digest(); d1 != mustDigest(t, src) {
		t.Error("source tag changed")
	}
}

func mustDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestEncryptIndex picks one platform of a Docker manifest list and writes a
// single-platform OCI image.
func TestEncryptIndex(t *testing.T) {
	host := startRegistry(t)
	amd := imageOf(t, types.DockerManifestSchema2, "amd64", layerOf(t, tarOf(t, "arch", strings.Repeat("amd64 ", 200)), tarball.WithMediaType(types.DockerLayer)))
	arm := imageOf(t, types.DockerManifestSchema2, "arm64", layerOf(t, tarOf(t, "arch", strings.Repeat("arm64 ", 200)), tarball.WithMediaType(types.DockerLayer)))
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.DockerManifestList),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	if err := remote.WriteIndex(ref(t, host+"/multi:1"), idx); err != nil {
		t.Fatal(err)
	}
	kek, kekPath := newKEK(t)

	res, err := Encrypt(context.Background(), ref(t, host+"/multi:1"), ref(t, host+"/multi:arm-enc"),
		Options{KeyID: testKeyID, KEKFile: kekPath, Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}})
	if err != nil {
		t.Fatal(err)
	}
	checkEncrypted(t, arm, host+"/multi:arm-enc", kek, res)
	if got := res.Layers[0].Digest; got != mustLayerDigest(t, arm) {
		t.Errorf("encrypted layer %s, want arm64's", got)
	}
	desc, err := remote.Get(ref(t, host+"/multi:arm-enc"))
	if err != nil {
		t.Fatal(err)
	}
	if desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("destination is %s, want a single OCI manifest", desc.MediaType)
	}

	// Without --platform: the default, amd64.
	res, err = Encrypt(context.Background(), ref(t, host+"/multi:1"), ref(t, host+"/multi:enc"), Options{KeyID: testKeyID, KEKFile: kekPath})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Layers[0].Digest; got != mustLayerDigest(t, amd) {
		t.Errorf("default platform encrypted %s, want amd64's layer", got)
	}

	_, err = Encrypt(context.Background(), ref(t, host+"/multi:1"), ref(t, host+"/multi:s390x"),
		Options{KeyID: testKeyID, KEKFile: kekPath, Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}})
	if err == nil || !strings.Contains(err.Error(), "no linux/s390x image (it has: linux/amd64, linux/arm64): choose one with --platform") {
		t.Errorf("missing platform: %v", err)
	}
}

func mustLayerDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return m.Layers[0].Digest
}

func TestEncryptRefusals(t *testing.T) {
	host := startRegistry(t)
	src := imageOf(t, types.OCIManifestSchema1, "amd64", layerOf(t, tarOf(t, "f", "x"), tarball.WithMediaType(types.OCILayer)))
	push(t, host+"/plain:1", src)
	_, kekPath := newKEK(t)
	if _, err := Encrypt(context.Background(), ref(t, host+"/plain:1"), ref(t, host+"/enc:1"), Options{KeyID: testKeyID, KEKFile: kekPath}); err != nil {
		t.Fatal(err)
	}
	foreign := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	foreign, err := mutate.Append(foreign, mutate.Addendum{
		Layer:     layerOf(t, tarOf(t, "f", "y"), tarball.WithMediaType(types.DockerForeignLayer)),
		URLs:      []string{"https://example.com/blob"},
		MediaType: types.DockerForeignLayer,
	})
	if err != nil {
		t.Fatal(err)
	}
	push(t, host+"/foreign:1", foreign)

	tests := []struct {
		name     string
		src, dst string
		opts     Options
		wantErr  string
	}{
		{"short KEK", "plain:1", "out:1", Options{KeyID: testKeyID, KEKFile: writeKEK(t, make([]byte, 16))},
			"want exactly 32 raw bytes (e.g. head -c 32 /dev/urandom >"},
		{"long KEK", "plain:1", "out:1", Options{KeyID: testKeyID, KEKFile: writeKEK(t, make([]byte, 33))}, "got more"},
		{"missing KEK", "plain:1", "out:1", Options{KeyID: testKeyID, KEKFile: "/nonexistent/image.kek"}, "no such file"},
		{"no KEK", "plain:1", "out:1", Options{KeyID: testKeyID}, "no KEK file"},
		{"KEK path with separator", "plain:1", "out:1", Options{KeyID: testKeyID, KEKFile: "a;b"}, "cannot be passed"},
		{"no key id", "plain:1", "out:1", Options{KEKFile: kekPath}, "no key id"},
		{"key id without scheme", "plain:1", "out:1", Options{KeyID: "default/image-key/x", KEKFile: kekPath}, "want kbs:///"},
		{"key id with two segments", "plain:1", "out:1", Options{KeyID: "kbs:///default/image-key", KEKFile: kekPath}, "three segments"},
		{"already encrypted", "enc:1", "out:1", Options{KeyID: testKeyID, KEKFile: kekPath},
			"layer 1/1 sha256:"},
		{"missing source", "nothere:1", "out:1", Options{KeyID: testKeyID, KEKFile: kekPath}, "source image " + host + "/nothere:1: "},
		{"destination is source", "plain:1", "plain:1", Options{KeyID: testKeyID, KEKFile: kekPath}, "is the source"},
		{"foreign layer", "foreign:1", "out:1", Options{KeyID: testKeyID, KEKFile: kekPath}, "Cloak's guest unpacks only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Encrypt(context.Background(), ref(t, host+"/"+tc.src), ref(t, host+"/"+tc.dst), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
			if tc.dst != tc.src {
				if _, err := remote.Head(ref(t, host+"/"+tc.dst)); err == nil {
					t.Errorf("a refused encryption pushed %s", tc.dst)
				}
			}
		})
	}

	// The already-encrypted refusal says why and what to do.
	_, err = Encrypt(context.Background(), ref(t, host+"/enc:1"), ref(t, host+"/out:1"), Options{KeyID: testKeyID, KEKFile: kekPath})
	if err == nil || !strings.Contains(err.Error(), "already encrypted (application/vnd.oci.image.layer.v1.tar+gzip+encrypted): give the plaintext image as the source") {
		t.Errorf("re-encrypting: %v", err)
	}
	// A digest is no destination.
	d := mustDigest(t, src)
	_, err = Encrypt(context.Background(), ref(t, host+"/plain:1"), ref(t, host+"/out@"+d.String()), Options{KeyID: testKeyID, KEKFile: kekPath})
	if err == nil || !strings.Contains(err.Error(), "give a tag") {
		t.Errorf("digest destination: %v", err)
	}
}

// TestEncryptCancelled stops between layers when the context ends.
func TestEncryptCancelled(t *testing.T) {
	host := startRegistry(t)
	push(t, host+"/plain:1", imageOf(t, types.OCIManifestSchema1, "amd64",
		layerOf(t, tarOf(t, "a", "1"), tarball.WithMediaType(types.OCILayer)),
		layerOf(t, tarOf(t, "b", "2"), tarball.WithMediaType(types.OCILayer))))
	_, kekPath := newKEK(t)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := Encrypt(ctx, ref(t, host+"/plain:1"), ref(t, host+"/enc:1"), Options{KeyID: testKeyID, KEKFile: kekPath,
		Progress: func(int, int, Layer) { cancel() }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := remote.Head(ref(t, host+"/enc:1")); err == nil {
		t.Error("a cancelled encryption pushed its image")
	}
}
