// Package pull fetches an OCI image inside the guest: it resolves the
// reference (through the pod's registry mirrors), verifies every blob
// against its digest, decrypts ocicrypt-encrypted layers with keys the
// attestation agent obtains from the KBS, and unpacks the layers into guest
// memory. The registry, the network and the host are untrusted: nothing is
// used before its digest has been checked against the manifest the
// reference names.
package pull

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/internal/atomicfile"
)

// DefaultPlatform is used when a request names none.
const DefaultPlatform = "linux/amd64"

// Default limits on what one image may unpack to. Guest memory holds the
// rootfs, so these stop a hostile image from exhausting it silently.
const (
	DefaultMaxUnpackedBytes = 4 << 30
	DefaultMaxFiles         = 1 << 20
)

// Options say where and how to pull.
type Options struct {
	// Registry holds the pod's mirrors and insecure registries; nil = none.
	Registry *agentapi.RegistryOptions
	// Platform selects the image from an index ("os/arch[/variant]");
	// empty = DefaultPlatform.
	Platform string
	// KeyProviderSocket is the attestation agent's unix socket serving the
	// ocicrypt keyprovider; empty = no key provider (encrypted images fail).
	KeyProviderSocket string
	// StoreDir is where images are kept, in guest memory (tmpfs under /run).
	StoreDir string
	// RootCAs verifies registries reached over HTTPS; nil = the image's CA
	// bundle (Go reads /etc/ssl/certs/ca-certificates.crt on Linux).
	RootCAs *x509.CertPool
	// MaxUnpackedBytes and MaxFiles bound the unpacked image; 0 = defaults.
	MaxUnpackedBytes int64
	MaxFiles         int
}

// Image is a pulled image.
type Image struct {
	// Rootfs is the unpacked filesystem, StoreDir/images/<alg>-<hex>/rootfs
	// (named by the manifest digest; "-" because ":" separates overlayfs
	// lowerdirs).
	Rootfs string
	// Config is the image's runtime configuration (entrypoint, env, ...).
	Config   ocispec.ImageConfig
	Response *agentapi.PullImageResponse
}

// Error is the only error type Pull returns. Reason is one of the
// agentapi.Reason* values; the message names the failing step and cause.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// stored is what the store keeps beside a rootfs so that a second pull of
// the same manifest can answer without fetching.
type stored struct {
	Config         ocispec.ImageConfig
	ManifestDigest string
	ConfigDigest   string
	LayerDigests   []string
	Encrypted      bool
	UnpackedBytes  int64
}

// Pull resolves image, and unless the store already holds its manifest,
// fetches, verifies, decrypts and unpacks it.
func Pull(ctx context.Context, image string, opts Options) (*Image, error) {
	fail := func(reason, step string, err error) error {
		return &Error{Reason: reason, Err: fmt.Errorf("pull %s: %s: %w", image, step, err)}
	}
	if opts.StoreDir == "" {
		return nil, fail(agentapi.ReasonInvalidRequest, "options", errors.New("no store directory"))
	}
	platform := opts.Platform
	if platform == "" {
		platform = DefaultPlatform
	}
	plat, err := v1.ParsePlatform(platform)
	if err != nil {
		return nil, fail(agentapi.ReasonInvalidRequest, "platform", err)
	}
	reg, err := newRegistry(image, opts.Registry, opts.RootCAs)
	if err != nil {
		return nil, fail(agentapi.ReasonInvalidRequest, "reference", err)
	}

	start := time.Now()
	desc, err := remote.Get(reg.ref, remote.WithContext(ctx), remote.WithTransport(reg.transport), remote.WithPlatform(*plat))
	if err != nil {
		return nil, fail(agentapi.ReasonImagePull, "resolve "+reg.where(), err)
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fail(agentapi.ReasonImagePull, "resolve platform "+platform, err)
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return nil, fail(agentapi.ReasonImagePull, "fetch manifest", err)
	}
	manifestDigest, err := img.Digest()
	if err != nil {
		return nil, fail(agentapi.ReasonImagePull, "manifest digest", err)
	}
	manifest, err := parseManifest(rawManifest)
	if err != nil {
		return nil, fail(agentapi.ReasonImagePull, "manifest "+manifestDigest.String(), err)
	}

	imageDir := filepath.Join(opts.StoreDir, "images", manifestDigest.Algorithm+"-"+manifestDigest.Hex)
	if s, ok := loadStored(imageDir); ok {
		return &Image{Rootfs: filepath.Join(imageDir, "rootfs"), Config: s.Config, Response: &agentapi.PullImageResponse{
			Image: image, ManifestDigest: s.ManifestDigest, ConfigDigest: s.ConfigDigest, LayerDigests: s.LayerDigests,
			Encrypted: s.Encrypted, UnpackedBytes: s.UnpackedBytes, ResolveNs: time.Since(start).Nanoseconds(),
		}}, nil
	}

	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return nil, fail(agentapi.ReasonImagePull, "fetch config "+string(manifest.Config.Digest), err)
	}
	config, err := parseConfig(rawConfig, manifest, plat)
	if err != nil {
		return nil, fail(agentapi.ReasonImagePull, "config "+string(manifest.Config.Digest), err)
	}
	resp := &agentapi.PullImageResponse{
		Image:          image,
		ManifestDigest: manifestDigest.String(),
		ConfigDigest:   string(manifest.Config.Digest),
		ResolveNs:      time.Since(start).Nanoseconds(),
	}

	if err := os.MkdirAll(imageDir, 0o700); err != nil {
		return nil, fail(agentapi.ReasonImagePull, "store", err)
	}
	partial, err := os.MkdirTemp(imageDir, "rootfs.partial-")
	if err != nil {
		return nil, fail(agentapi.ReasonImagePull, "store", err)
	}
	defer os.RemoveAll(partial) // gone after the rename on success
	// Image rootfs directories are world-readable like any root filesystem.
	if err := os.Chmod(partial, 0o755); err != nil {
		return nil, fail(agentapi.ReasonImagePull, "store", err)
	}

	u, err := newUnpacker(partial, opts)
	if err != nil {
		return nil, fail(agentapi.ReasonImagePull, "store", err)
	}
	defer u.close()
	for i, l := range manifest.Layers {
		resp.LayerDigests = append(resp.LayerDigests, string(l.Digest))
		step := fmt.Sprintf("layer %d/%d %s", i+1, len(manifest.Layers), l.Digest)
		t, err := fetchLayer(ctx, img, l, config.RootFS.DiffIDs[i], opts.KeyProviderSocket, image, u)
		if err != nil {
			var pe *Error
			if errors.As(err, &pe) {
				return nil, fail(pe.Reason, step, pe.Err)
			}
			return nil, fail(agentapi.ReasonImagePull, step, err)
		}
		resp.Encrypted = resp.Encrypted || t.encrypted
		resp.FetchNs += t.fetch.Nanoseconds()
		resp.DecryptNs += t.decrypt.Nanoseconds()
		resp.UnpackNs += t.unpack.Nanoseconds()
	}
	resp.UnpackedBytes = u.bytes

	s := stored{Config: config.Config, ManifestDigest: resp.ManifestDigest, ConfigDigest: resp.ConfigDigest,
		LayerDigests: resp.LayerDigests, Encrypted: resp.Encrypted, UnpackedBytes: resp.UnpackedBytes}
	if err := saveStored(imageDir, s); err != nil {
		return nil, fail(agentapi.ReasonImagePull, "store", err)
	}
	rootfs := filepath.Join(imageDir, "rootfs")
	if err := os.Rename(partial, rootfs); err != nil {
		// A concurrent pull of the same manifest got there first: its
		// rootfs has the same verified content.
		if _, statErr := os.Stat(rootfs); statErr != nil {
			return nil, fail(agentapi.ReasonImagePull, "store", err)
		}
	}
	return &Image{Rootfs: rootfs, Config: config.Config, Response: resp}, nil
}

const storedFile = "image.json"

// loadStored reports a completely unpacked image: rootfs exists only after
// the final rename, and image.json is written before it.
func loadStored(imageDir string) (stored, bool) {
	if _, err := os.Stat(filepath.Join(imageDir, "rootfs")); err != nil {
		return stored{}, false
	}
	b, err := os.ReadFile(filepath.Join(imageDir, storedFile))
	if err != nil {
		return stored{}, false
	}
	var s stored
	if json.Unmarshal(b, &s) != nil || s.ManifestDigest == "" {
		return stored{}, false
	}
	return s, true
}

func saveStored(imageDir string, s stored) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(imageDir, storedFile), b, 0o600)
}
