// Package imagecrypt encrypts a registry image for Cloak: every layer is
// encrypted with ocicrypt's layer cipher and its key wrapped by the
// "attestation-agent" key provider format (kbs/keywrap), so that only a guest
// whose attestation agent gets the KEK from the KBS can decrypt it. The result
// is what skopeo copy --encryption-key provider:attestation-agent:... writes
// with kbsctl keyprovider serve, without skopeo or a provider socket.
package imagecrypt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"strings"
	"time"

	"github.com/containers/ocicrypt/blockcipher"
	ocicfg "github.com/containers/ocicrypt/config"
	ocikeyprovider "github.com/containers/ocicrypt/keywrap/keyprovider"
	keyproviderpb "github.com/containers/ocicrypt/utils/keyprovider"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/keywrap"
)

// Limits on the source image. They are the guest's own (guest-image/pull):
// an image it would refuse to pull is refused here, before any work.
const (
	maxManifestBytes = 4 << 20
	maxConfigBytes   = 1 << 20
	maxLayers        = 128
)

const (
	encryptedSuffix = "+encrypted"
	encAnnotations  = "org.opencontainers.image.enc."
	// KeyAnnotation carries the wrapped layer key; ocicrypt's keyprovider
	// wrapper names it after the provider.
	KeyAnnotation = encAnnotations + "keys.provider." + keywrap.ProviderName
	// PubOptsAnnotation carries the cipher's public options (the HMAC).
	PubOptsAnnotation = encAnnotations + "pubopts"
)

// DefaultPlatform is the image picked from an index when Options names none.
var DefaultPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// encryptedType maps the layer media types Cloak's guest unpacks to their
// encrypted form. Docker's gzip layer becomes OCI's (the manifest is
// rewritten as OCI, as skopeo does when it encrypts): "+encrypted" is only
// defined for OCI media types.
var encryptedType = map[types.MediaType]types.MediaType{
	types.OCIUncompressedLayer: types.OCIUncompressedLayer + encryptedSuffix,
	types.OCILayer:             types.OCILayer + encryptedSuffix,
	types.OCILayerZStd:         types.OCILayerZStd + encryptedSuffix,
	types.DockerLayer:          types.OCILayer + encryptedSuffix,
}

// Options say how to encrypt.
type Options struct {
	// KeyID is where the KBS serves the KEK: kbs:///REPOSITORY/TYPE/TAG.
	KeyID string
	// KEKFile holds the 32-byte key-encryption key.
	KEKFile string
	// Platform picks the image when the source is an index; nil means
	// DefaultPlatform.
	Platform *v1.Platform
	// Remote are extra registry options (credentials, transport).
	Remote []remote.Option
	// TempDir is where encrypted layers are kept until pushed; "" means
	// os.TempDir().
	TempDir string
	// Progress, if set, is called after each layer is encrypted.
	Progress func(index, count int, l Layer)
}

// Layer describes one encrypted layer.
type Layer struct {
	Digest          v1.Hash       `json:"digest"` // of the plaintext blob in the source
	EncryptedDigest v1.Hash       `json:"encrypted_digest"`
	Size            int64         `json:"size"`
	EncryptedSize   int64         `json:"encrypted_size"`
	Duration        time.Duration `json:"-"` // fetching and encrypting
}

// Result describes the pushed image.
type Result struct {
	// Image is the destination repository pinned to the pushed manifest.
	Image          string  `json:"image"`
	ManifestDigest v1.Hash `json:"manifest_digest"`
	Layers         []Layer `json:"layers"`
}

// Encrypt reads the image src (from an index, the one for opts.Platform),
// encrypts each layer and pushes the single-platform result to dst. The
// config, with the plaintext layers' diff_ids, is copied byte for byte so the
// guest checks what it decrypts. src is left as it was.
func Encrypt(ctx context.Context, src, dst name.Reference, opts Options) (*Result, error) {
	wrap, err := newWrapper(opts.KeyID, opts.KEKFile)
	if err != nil {
		return nil, err
	}
	if _, ok := dst.(name.Tag); !ok {
		return nil, fmt.Errorf("destination %s: give a tag (HOST/REPO:TAG), not a digest: the digest is known only after encryption", dst)
	}
	if src.Name() == dst.Name() {
		return nil, fmt.Errorf("destination %s is the source: the plaintext image would lose its tag; choose another tag", dst)
	}
	platform := DefaultPlatform
	if opts.Platform != nil {
		platform = *opts.Platform
	}
	ropts := append([]remote.Option{remote.WithContext(ctx), remote.WithPlatform(platform)}, opts.Remote...)

	img, err := sourceImage(src, platform, ropts)
	if err != nil {
		return nil, err
	}
	m, config, err := sourceManifest(src, img)
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp(opts.TempDir, "imagecrypt-")
	if err != nil {
		return nil, fmt.Errorf("directory for encrypted layers: %w", err)
	}
	defer os.RemoveAll(dir)

	out := &encryptedImage{config: config, layers: map[v1.Hash]*spooledLayer{}}
	manifest := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: types.OCIConfigJSON, Size: m.Config.Size, Digest: m.Config.Digest},
		Annotations:   m.Annotations,
	}
	res := &Result{}
	for i, desc := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		start := time.Now()
		l, err := encryptLayer(img, desc, dir, wrap)
		if err != nil {
			return nil, fmt.Errorf("layer %d/%d %s of %s: %w", i+1, len(m.Layers), desc.Digest, src, err)
		}
		out.layers[l.desc.Digest] = l
		manifest.Layers = append(manifest.Layers, l.desc)
		info := Layer{Digest: desc.Digest, EncryptedDigest: l.desc.Digest, Size: desc.Size, EncryptedSize: l.desc.Size, Duration: time.Since(start)}
		res.Layers = append(res.Layers, info)
		if opts.Progress != nil {
			opts.Progress(i, len(m.Layers), info)
		}
	}
	if out.manifest, err = json.Marshal(manifest); err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	pushed, err := partial.CompressedToImage(out)
	if err != nil {
		return nil, err
	}
	if err := remote.Write(dst, pushed, ropts...); err != nil {
		return nil, fmt.Errorf("push %s: %w", dst, err)
	}
	res.ManifestDigest, _, err = v1.SHA256(bytes.NewReader(out.manifest))
	if err != nil {
		return nil, err
	}
	res.Image = dst.Context().Digest(res.ManifestDigest.String()).String()
	return res, nil
}

// sourceImage resolves src, picking platform's image from an index.
func sourceImage(src name.Reference, platform v1.Platform, ropts []remote.Option) (v1.Image, error) {
	desc, err := remote.Get(src, ropts...)
	if err != nil {
		return nil, fmt.Errorf("source image %s: %w", src, err)
	}
	img, err := desc.Image()
	if err == nil {
		return img, nil
	}
	if !desc.MediaType.IsIndex() {
		return nil, fmt.Errorf("source image %s: %w", src, err)
	}
	var have []string
	if idx, ierr := desc.ImageIndex(); ierr == nil {
		if im, ierr := idx.IndexManifest(); ierr == nil {
			for _, c := range im.Manifests {
				if c.Platform != nil {
					have = append(have, c.Platform.String())
				}
			}
		}
	}
	return nil, fmt.Errorf("source %s is an index with no %s image (it has: %s): choose one with --platform",
		src, platform.String(), strings.Join(have, ", "))
}

// sourceManifest reads and checks the source manifest and config.
func sourceManifest(src name.Reference, img v1.Image) (*v1.Manifest, []byte, error) {
	raw, err := img.RawManifest()
	if err != nil {
		return nil, nil, fmt.Errorf("source manifest of %s: %w", src, err)
	}
	if len(raw) > maxManifestBytes {
		return nil, nil, fmt.Errorf("source manifest of %s is %d bytes, more than the %d a guest accepts", src, len(raw), maxManifestBytes)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("source manifest of %s: %w", src, err)
	}
	switch m.MediaType {
	case "", types.OCIManifestSchema1, types.DockerManifestSchema2:
	default:
		return nil, nil, fmt.Errorf("source %s has manifest type %q: want an OCI or Docker v2 image manifest", src, m.MediaType)
	}
	switch m.Config.MediaType {
	case types.OCIConfigJSON, types.DockerConfigJSON:
	default:
		return nil, nil, fmt.Errorf("source %s has config type %q: want an OCI or Docker image config", src, m.Config.MediaType)
	}
	if m.Config.Size < 0 || m.Config.Size > maxConfigBytes {
		return nil, nil, fmt.Errorf("source config of %s is %d bytes: a guest accepts at most %d", src, m.Config.Size, maxConfigBytes)
	}
	if len(m.Layers) == 0 || len(m.Layers) > maxLayers {
		return nil, nil, fmt.Errorf("source %s has %d layers: want 1 to %d", src, len(m.Layers), maxLayers)
	}
	// Refuse every unusable layer before encrypting any.
	for i, l := range m.Layers {
		if err := checkLayer(l); err != nil {
			return nil, nil, fmt.Errorf("source %s layer %d/%d %s: %w", src, i+1, len(m.Layers), l.Digest, err)
		}
	}
	config, err := img.RawConfigFile() // ggcr checks its size and digest
	if err != nil {
		return nil, nil, fmt.Errorf("source config of %s: %w", src, err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(config))
	if err != nil {
		return nil, nil, fmt.Errorf("source config of %s: %w", src, err)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, nil, fmt.Errorf("source %s has %d layers but its config lists %d diff_ids", src, len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	return m, config, nil
}

func checkLayer(l v1.Descriptor) error {
	if strings.HasSuffix(string(l.MediaType), encryptedSuffix) {
		return fmt.Errorf("already encrypted (%s): give the plaintext image as the source", l.MediaType)
	}
	for k := range l.Annotations {
		if strings.HasPrefix(k, encAnnotations) {
			return fmt.Errorf("already carries encryption annotation %s: give the plaintext image as the source", k)
		}
	}
	if _, ok := encryptedType[l.MediaType]; !ok {
		return fmt.Errorf("media type %q: Cloak's guest unpacks only OCI tar, tar+gzip, tar+zstd and Docker tar.gzip layers", l.MediaType)
	}
	if len(l.URLs) > 0 {
		return errors.New("foreign layer (it has URLs): Cloak's guest does not fetch foreign layers")
	}
	return nil
}

// encryptLayer streams one source layer through ocicrypt's layer cipher into
// a file under dir and returns it with its encrypted descriptor.
//
// This is what ocicrypt.EncryptLayer does, written out with its block
// cipher: EncryptLayer finds key wrappers only in ocicrypt's process-wide
// registry (RegisterKeyWrapper), where the "provider.attestation-agent" entry
// is also what decrypting code and other tests in the same process register
// (a gRPC client for a socket). Registering ours there would make the result
// depend on who registered last, so the wrapping is called directly instead
// (the guest's guest-image/pull/decrypt.go does the same on its side). The
// output is what EncryptLayer + ocicrypt's keyprovider wrapper write: AES-256-CTR
// with HMAC-SHA256, the private options (key, nonce, plaintext blob digest)
// wrapped into KeyAnnotation as base64, the public options in
// PubOptsAnnotation as base64 JSON.
func encryptLayer(img v1.Image, desc v1.Descriptor, dir string, wrap func([]byte) ([]byte, error)) (*spooledLayer, error) {
	layer, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	// Compressed verifies the blob's size and digest at EOF.
	blob, err := layer.Compressed()
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	defer blob.Close()
	lbch, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		return nil, err
	}
	// Bounded by the descriptor: a longer blob fails here, not on disk.
	limited := &io.LimitedReader{R: blob, N: desc.Size + 1}
	enc, finalize, err := lbch.Encrypt(limited, blockcipher.AES256CTR)
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	f, err := os.CreateTemp(dir, "layer-")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, sum), enc)
	if err != nil {
		return nil, fmt.Errorf("fetch and encrypt: %w", err)
	}
	if read := desc.Size + 1 - limited.N; read != desc.Size {
		return nil, fmt.Errorf("blob is %d bytes, the manifest says %d", read, desc.Size)
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	lbco, err := finalize()
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	// ocicrypt seals the plaintext blob's digest with the key; the guest
	// checks the decrypted stream against it.
	lbco.Private.Digest = digest.Digest(desc.Digest.String())
	priv, err := json.Marshal(lbco.Private)
	if err != nil {
		return nil, err
	}
	pub, err := json.Marshal(lbco.Public)
	if err != nil {
		return nil, err
	}
	wrapped, err := wrap(priv)
	if err != nil {
		return nil, err
	}
	annotations := maps.Clone(desc.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[KeyAnnotation] = base64.StdEncoding.EncodeToString(wrapped)
	annotations[PubOptsAnnotation] = base64.StdEncoding.EncodeToString(pub)
	return &spooledLayer{path: f.Name(), desc: v1.Descriptor{
		MediaType:   encryptedType[desc.MediaType],
		Size:        n,
		Digest:      hashOf(sum),
		Annotations: annotations,
	}}, nil
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// newWrapper checks the key id and KEK file and returns the function that
// wraps a layer's private options.
//
// It runs kbs/keywrap's provider service in process, with the request
// ocicrypt's keyprovider wrapper would send it over gRPC: the parameters,
// KEK-file rules (exactly 32 bytes, bounded read) and annotation are then
// those of kbsctl keyprovider serve by construction. A first wrap of empty
// options checks the key id and KEK before any registry work.
func newWrapper(keyID, kekFile string) (func([]byte) ([]byte, error), error) {
	if keyID == "" {
		return nil, errors.New("no key id: give kbs:///REPOSITORY/TYPE/TAG, where the KBS serves the KEK")
	}
	if _, _, err := kbstypes.ParseResourceURI(keyID); err != nil {
		return nil, fmt.Errorf("key id %q: %w", keyID, err)
	}
	if kekFile == "" {
		return nil, errors.New("no KEK file: give a file holding 32 random bytes (head -c 32 /dev/urandom > image.kek)")
	}
	params := "keypath=" + kekFile + ";kid=" + keyID
	if p, err := keywrap.ParseParams(params); err != nil || p.KeyPath != kekFile || p.KID != keyID {
		// The provider parameters separate fields with ';' (or '::').
		return nil, fmt.Errorf("KEK file %q: a path containing ';' or '::' cannot be passed to the key provider; rename the file", kekFile)
	}
	svc := keywrap.NewService(nil)
	wrap := func(optsData []byte) ([]byte, error) {
		in, err := json.Marshal(ocikeyprovider.KeyProviderKeyWrapProtocolInput{
			Operation: ocikeyprovider.OpKeyWrap,
			KeyWrapParams: ocikeyprovider.KeyWrapParams{
				Ec:       &ocicfg.EncryptConfig{Parameters: map[string][][]byte{keywrap.ProviderName: {[]byte(params)}}},
				OptsData: optsData,
			},
		})
		if err != nil {
			return nil, err
		}
		out, err := svc.WrapKey(context.Background(), &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: in})
		if err != nil {
			return nil, errors.New(status.Convert(err).Message())
		}
		var res ocikeyprovider.KeyProviderKeyWrapProtocolOutput
		if err := json.Unmarshal(out.GetKeyProviderKeyWrapProtocolOutput(), &res); err != nil {
			return nil, fmt.Errorf("key provider output: %w", err)
		}
		return res.KeyWrapResults.Annotation, nil
	}
	if _, err := wrap([]byte("{}")); err != nil {
		return nil, err
	}
	return wrap, nil
}

// encryptedImage is the image to push: the new manifest, the source config
// and the spooled encrypted layers.
type encryptedImage struct {
	manifest, config []byte
	layers           map[v1.Hash]*spooledLayer
}

func (i *encryptedImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (i *encryptedImage) RawManifest() ([]byte, error)        { return i.manifest, nil }
func (i *encryptedImage) RawConfigFile() ([]byte, error)      { return i.config, nil }
func (i *encryptedImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	l, ok := i.layers[h]
	if !ok {
		return nil, fmt.Errorf("no layer %s in the encrypted image", h)
	}
	return l, nil
}

// spooledLayer is an encrypted layer kept in a file until pushed.
type spooledLayer struct {
	path string
	desc v1.Descriptor
}

func (l *spooledLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *spooledLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *spooledLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *spooledLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }
