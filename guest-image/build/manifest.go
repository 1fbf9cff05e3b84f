package build

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/cloak-containers/cloak/measurements"
	"github.com/cloak-containers/cloak/measurements/snp"
)

// File names inside an image directory.
const (
	KernelFile   = "vmlinuz"
	InitrdFile   = "initrd.img"
	ManifestFile = "manifest.json"
)

// Schema names this manifest format; a new format gets a new name.
const Schema = "cloak-image/v1"

// Limits for reading a manifest, which may come from anywhere.
const (
	maxManifestSize = 1 << 20
	maxCmdline      = 2048 // x86's COMMAND_LINE_SIZE
	maxListLen      = 1024
)

// Manifest describes a built guest image: what went in and the digests a
// relying party needs to recompute its launch measurement.
type Manifest struct {
	Schema  string   `json:"schema"`
	Kernel  Artifact `json:"kernel"`
	Initrd  Artifact `json:"initrd"`
	Cmdline string   `json:"cmdline"`

	KernelPackage KernelPackage `json:"kernel_package"`
	// Modules are the module files in /lib/modules, in load order.
	Modules     []string `json:"modules"`
	RuncVersion string   `json:"runc_version"`
	// Files are the regular files in the initrd, sorted by path.
	Files []File `json:"files"`

	Measurements Measurements `json:"measurements"`
}

// Artifact is one boot artifact written beside the manifest.
type Artifact struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	SHA384 string `json:"sha384"`
}

// KernelPackage identifies the Debian package the kernel came from.
type KernelPackage struct {
	Name      string `json:"name"`
	Version   string `json:"version"`
	Release   string `json:"release"`
	DebSHA256 string `json:"deb_sha256"`
}

// File is one regular file inside the initrd.
type File struct {
	Path   string `json:"path"`
	Mode   string `json:"mode"` // octal permission bits, e.g. "0755"
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Measurements are the expected launch measurements, hex encoded.
type Measurements struct {
	// Emulated is measurements.EmulatedLaunchDigest of kernel, initrd
	// and cmdline.
	Emulated string `json:"emulated"`
	// SNP and TDX are the real launch values, when the build was given
	// the firmware (cloak-image build --snp-firmware / --tdx-firmware).
	SNP *SNPMeasurements `json:"snp,omitempty"`
	TDX *TDXMeasurements `json:"tdx,omitempty"`
}

func artifactOf(b []byte) Artifact {
	s256 := sha256.Sum256(b)
	s384 := sha512.Sum384(b)
	return Artifact{Size: int64(len(b)), SHA256: hex.EncodeToString(s256[:]), SHA384: hex.EncodeToString(s384[:])}
}

// marshal encodes the manifest the one way Build writes it, so that equal
// manifests are equal bytes.
func (m *Manifest) marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ReadManifest reads and checks DIR/manifest.json. It checks the manifest's
// form only; VerifyDir also checks it against the artifacts.
func ReadManifest(dir string) (*Manifest, error) {
	f, err := os.Open(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	return ParseManifest(b)
}

// ParseManifest decodes and checks a manifest. Unknown fields are refused:
// a manifest is a statement about an image, and a field this version does
// not understand could be one it ought to check.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("manifest larger than %d bytes", maxManifestSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	if dec.More() {
		return nil, errors.New("parse manifest: trailing data after the JSON object")
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("invalid manifest: %w", err)
	}
	return &m, nil
}

func (m *Manifest) validate() error {
	if m.Schema != Schema {
		return fmt.Errorf("schema %q, want %q", m.Schema, Schema)
	}
	for name, a := range map[string]Artifact{"kernel": m.Kernel, "initrd": m.Initrd} {
		if a.Size <= 0 {
			return fmt.Errorf("%s size %d", name, a.Size)
		}
		if err := checkHex(name+" sha256", a.SHA256, sha256.Size); err != nil {
			return err
		}
		if err := checkHex(name+" sha384", a.SHA384, sha512.Size384); err != nil {
			return err
		}
	}
	if len(m.Cmdline) > maxCmdline || strings.ContainsRune(m.Cmdline, 0) {
		return fmt.Errorf("cmdline: longer than %d bytes or holds a NUL", maxCmdline)
	}
	if err := checkHex("measurements.emulated", m.Measurements.Emulated, sha512.Size384); err != nil {
		return err
	}
	if s := m.Measurements.SNP; s != nil {
		if len(s.Values) > 3*snp.MaxVCPUs {
			return fmt.Errorf("measurements.snp: %d values", len(s.Values))
		}
		for _, v := range s.Values {
			if err := checkHex("measurements.snp measurement", v.Measurement, sha512.Size384); err != nil {
				return err
			}
		}
	}
	if t := m.Measurements.TDX; t != nil {
		for name, v := range map[string]string{"mr_td": t.MRTD, "rtmr1": t.RTMR1, "rtmr2": t.RTMR2} {
			if err := checkHex("measurements.tdx "+name, v, sha512.Size384); err != nil {
				return err
			}
		}
	}
	if len(m.Modules) > maxListLen || len(m.Files) > maxListLen {
		return fmt.Errorf("more than %d modules or files", maxListLen)
	}
	for _, mod := range m.Modules {
		if mod != path.Base(mod) || !strings.HasSuffix(mod, ".ko") {
			return fmt.Errorf("module %q: want a plain NAME.ko file name", mod)
		}
	}
	for _, f := range m.Files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return fmt.Errorf("file path %q: want a clean absolute path", f.Path)
		}
		if err := checkHex("file "+f.Path+" sha256", f.SHA256, sha256.Size); err != nil {
			return err
		}
	}
	return nil
}

func checkHex(what, s string, n int) error {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != n || s != strings.ToLower(s) {
		return fmt.Errorf("%s: want %d lowercase hex bytes, got %q", what, n, s)
	}
	return nil
}

// Verification is the result of checking an image directory.
type Verification struct {
	Manifest *Manifest
	// Emulated is the emulated launch measurement recomputed from the
	// files and the manifest's cmdline, hex encoded.
	Emulated string
	// Mismatches name each thing that differs from the manifest; empty
	// means the directory matches its manifest.
	Mismatches []string
}

// VerifyDir recomputes the digests of DIR's kernel and initrd and the
// emulated launch measurement, and compares them with DIR's manifest.
func VerifyDir(dir string) (*Verification, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	kernel, k384, err := hashFile(filepath.Join(dir, KernelFile))
	if err != nil {
		return nil, err
	}
	initrd, i384, err := hashFile(filepath.Join(dir, InitrdFile))
	if err != nil {
		return nil, err
	}
	v := &Verification{
		Manifest: m,
		Emulated: hex.EncodeToString(measurements.EmulatedLaunchDigestFromHashes(k384, i384, sha512.Sum384([]byte(m.Cmdline)))),
	}
	for _, a := range []struct {
		name      string
		got, want Artifact
	}{{KernelFile, kernel, m.Kernel}, {InitrdFile, initrd, m.Initrd}} {
		if a.got != a.want {
			v.Mismatches = append(v.Mismatches, fmt.Sprintf("%s: size %d sha384 %s, manifest says size %d sha384 %s",
				a.name, a.got.Size, a.got.SHA384, a.want.Size, a.want.SHA384))
		}
	}
	if v.Emulated != m.Measurements.Emulated {
		v.Mismatches = append(v.Mismatches, fmt.Sprintf("emulated measurement %s, manifest says %s", v.Emulated, m.Measurements.Emulated))
	}
	return v, nil
}

// hashFile streams a file through SHA-256 and SHA-384 (boot artifacts can be
// large; nothing needs them in memory).
func hashFile(name string) (Artifact, [sha512.Size384]byte, error) {
	var s384 [sha512.Size384]byte
	f, err := os.Open(name)
	if err != nil {
		return Artifact{}, s384, fmt.Errorf("read artifact: %w", err)
	}
	defer f.Close()
	h256, h384 := sha256.New(), sha512.New384()
	n, err := io.Copy(io.MultiWriter(h256, h384), f)
	if err != nil {
		return Artifact{}, s384, fmt.Errorf("hash %s: %w", name, err)
	}
	h384.Sum(s384[:0])
	return Artifact{Size: n, SHA256: hex.EncodeToString(h256.Sum(nil)), SHA384: hex.EncodeToString(s384[:])}, s384, nil
}
