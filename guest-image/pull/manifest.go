package pull

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxLayers bounds the layers of one image (Docker's own limit is 127).
const maxLayers = 128

const (
	dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	dockerConfig   = "application/vnd.docker.container.image.v1+json"
	dockerLayer    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	encSuffix      = "+encrypted"
)

// compression of a layer as its media type declares it.
type compression int

const (
	uncompressed compression = iota
	gzipped
	zstded
)

// layerMediaTypes are the layer types the guest unpacks; each may also
// carry +encrypted. Foreign and non-distributable layers are refused: they
// would make the guest fetch from URLs the manifest chooses.
var layerMediaTypes = map[string]compression{
	ocispec.MediaTypeImageLayer:     uncompressed,
	ocispec.MediaTypeImageLayerGzip: gzipped,
	ocispec.MediaTypeImageLayerZstd: zstded,
	dockerLayer:                     gzipped,
}

// layerType splits a layer media type into its compression and whether it
// is encrypted.
func layerType(mediaType string) (compression, bool, error) {
	base, encrypted := strings.CutSuffix(mediaType, encSuffix)
	c, ok := layerMediaTypes[base]
	if !ok {
		return 0, false, fmt.Errorf("layer media type %q is not supported", mediaType)
	}
	return c, encrypted, nil
}

// parseManifest reads an image manifest (OCI or Docker schema 2) whose
// bytes go-containerregistry has already matched to the digest the
// reference resolved to, and checks what the pull relies on.
func parseManifest(raw []byte) (*ocispec.Manifest, error) {
	if len(raw) > maxManifestBytes {
		return nil, fmt.Errorf("manifest is %d bytes, limit is %d", len(raw), maxManifestBytes)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("not an image manifest: %w", err)
	}
	if m.SchemaVersion != 2 {
		return nil, fmt.Errorf("schemaVersion %d: want 2", m.SchemaVersion)
	}
	switch m.MediaType {
	case "", ocispec.MediaTypeImageManifest, dockerManifest:
	default:
		return nil, fmt.Errorf("media type %q is not an image manifest", m.MediaType)
	}
	switch m.Config.MediaType {
	case ocispec.MediaTypeImageConfig, dockerConfig:
	default:
		return nil, fmt.Errorf("config media type %q is not an image config", m.Config.MediaType)
	}
	if err := checkDescriptor(m.Config, maxConfigBytes); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(m.Layers) == 0 || len(m.Layers) > maxLayers {
		return nil, fmt.Errorf("%d layers: want 1 to %d", len(m.Layers), maxLayers)
	}
	for i, l := range m.Layers {
		if _, _, err := layerType(l.MediaType); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		if err := checkDescriptor(l, 0); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		if len(l.URLs) > 0 {
			return nil, fmt.Errorf("layer %d: foreign layers (urls) are not fetched", i+1)
		}
	}
	return &m, nil
}

// checkDescriptor checks a descriptor's digest and size; maxSize 0 = only
// positive.
func checkDescriptor(d ocispec.Descriptor, maxSize int64) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("digest %q: %w", d.Digest, err)
	}
	if d.Size <= 0 || (maxSize > 0 && d.Size > maxSize) {
		return fmt.Errorf("size %d is out of range (1 to %d bytes)", d.Size, maxSize)
	}
	return nil
}

// parseConfig reads an image config (already verified against the
// manifest's config digest) and checks it against the manifest and the
// requested platform.
func parseConfig(raw []byte, m *ocispec.Manifest, want *v1.Platform) (*ocispec.Image, error) {
	if len(raw) > maxConfigBytes {
		return nil, fmt.Errorf("config is %d bytes, limit is %d", len(raw), maxConfigBytes)
	}
	var c ocispec.Image
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("not an image config: %w", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the config")
	}
	if c.RootFS.Type != "layers" {
		return nil, fmt.Errorf("rootfs type %q: want layers", c.RootFS.Type)
	}
	if len(c.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("config lists %d diff_ids for %d layers", len(c.RootFS.DiffIDs), len(m.Layers))
	}
	for i, d := range c.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("diff_id %d: %w", i+1, err)
		}
		if d.Algorithm() != digest.SHA256 && d.Algorithm() != digest.SHA512 {
			return nil, fmt.Errorf("diff_id %d: algorithm %s not supported", i+1, d.Algorithm())
		}
	}
	// A config that states its platform must be the one asked for: the
	// reference may name a single-platform manifest directly.
	if c.OS != "" && c.OS != want.OS {
		return nil, fmt.Errorf("image is for %s/%s, want %s", c.OS, c.Architecture, want)
	}
	if c.Architecture != "" && c.Architecture != want.Architecture {
		return nil, fmt.Errorf("image is for %s/%s, want %s", c.OS, c.Architecture, want)
	}
	return &c, nil
}
