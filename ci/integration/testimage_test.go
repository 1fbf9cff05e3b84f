package integration

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/containers/ocicrypt"
	ocicfg "github.com/containers/ocicrypt/config"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cloak-containers/cloak/internal/testutil"
)

// startRegistry serves an OCI registry (go-containerregistry's, in memory) on
// 127.0.0.1; a guest on QEMU user networking reaches it at 10.0.2.2:PORT.
func startRegistry(t testing.TB) (host string) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// busyboxTar is a layer holding Debian's static busybox and the applets the
// tests use, as an uncompressed tar.
func busyboxTar(t testing.TB) []byte {
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is needed for test images (ci/vm-deps.sh installs it): %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/"} {
		add(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}, nil)
	}
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin))}, bin)
	for _, applet := range []string{"sh", "echo", "cat", "sleep", "ls", "id", "hostname", "head", "true", "false", "wc", "sha256sum", "yes", "tr", "stty", "wget", "ip"} {
		add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox"}, nil)
	}
	secret := []byte("the secret recipe\n")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/recipe.txt", Mode: 0o644, Size: int64(len(secret))}, secret)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func busyboxImage(t testing.TB, layer v1.Layer, add mutate.Addendum) v1.Image {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if layer != nil {
		add.Layer = layer
	}
	img, err := mutate.Append(img, add)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}, WorkingDir: "/"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func push(t testing.TB, ref string, img v1.Image) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// pushBusybox pushes a plain busybox image and returns its reference.
func pushBusybox(t testing.TB, registryHost string) string {
	layer, err := tarball.LayerFromOpener(testutil.BytesOpener(busyboxTar(t)), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	ref := registryHost + "/busybox:latest"
	push(t, ref, busyboxImage(t, layer, mutate.Addendum{}))
	return ref
}

// encryptedLayer is an ocicrypt-encrypted layer: its blob is ciphertext, its
// diff_id the digest of the plaintext tar (what the guest checks after
// decrypting).
type encryptedLayer struct {
	blob   []byte
	diffID v1.Hash
}

func (l *encryptedLayer) Digest() (v1.Hash, error) {
	sum := sha256.Sum256(l.blob)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, nil
}
func (l *encryptedLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *encryptedLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *encryptedLayer) Uncompressed() (io.ReadCloser, error) { return nil, io.ErrUnexpectedEOF }
func (l *encryptedLayer) Size() (int64, error)                 { return int64(len(l.blob)), nil }
func (l *encryptedLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(ocispec.MediaTypeImageLayerGzip + "+encrypted"), nil
}

// pushEncryptedBusybox encrypts the busybox layer with ocicrypt through the
// host-side keyprovider already registered (useProvider), under key id kid
// with the KEK in kekPath, and pushes it.
func pushEncryptedBusybox(t testing.TB, registryHost, repo, kekPath, kid string) string {
	plain, err := tarball.LayerFromOpener(testutil.BytesOpener(busyboxTar(t)), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := plain.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	gz, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := ocicfg.EncryptWithKeyProvider([][]byte{[]byte("attestation-agent:keypath=" + kekPath + ";kid=" + kid)})
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz), Size: int64(len(gz))}
	encReader, finalize, err := ocicrypt.EncryptLayer(cc.EncryptConfig, bytes.NewReader(gz), desc)
	if err != nil {
		t.Fatalf("encrypt layer: %v", err)
	}
	blob, err := io.ReadAll(encReader)
	if err != nil {
		t.Fatal(err)
	}
	annotations, err := finalize()
	if err != nil {
		t.Fatal(err)
	}
	diffID, err := plain.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	ref := registryHost + "/" + repo + ":latest"
	push(t, ref, busyboxImage(t, &encryptedLayer{blob: blob, diffID: diffID}, mutate.Addendum{Annotations: annotations}))
	return ref
}
