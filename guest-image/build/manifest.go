package build

import (
	"bytes"
	"context"
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

	"github.com/cloak-containers/cloak/guest-image/build/rootimg"
	"github.com/cloak-containers/cloak/measurements"
	"github.com/cloak-containers/cloak/measurements/snp"
)

// File names inside an image directory.
const (
	KernelFile   = "vmlinuz"
	RootFile     = "root.img"
	InitrdFile   = "initrd.img"
	ManifestFile = "manifest.json"
	// DebianDir holds the Debian-kernel flavour: DebianDir/vmlinuz and
	// DebianDir/initrd.img.
	DebianDir = "debian"
)

// Schema names this manifest format; a new format gets a new name.
const Schema = "cloak-image/v2"

// Limits for reading a manifest, which may come from anywhere.
const (
	maxManifestSize = 1 << 20
	maxCmdline      = 2048 // x86's COMMAND_LINE_SIZE
	maxListLen      = 1024
)

// Manifest describes a built guest image: what went in and the digests a
// relying party needs to recompute its launch measurement. The top level is
// the default boot (Cloak's kernel, the verified root disk, no initrd);
// Debian describes the Debian-kernel flavour.
type Manifest struct {
	Schema string   `json:"schema"`
	Kernel Artifact `json:"kernel"`
	Root   RootDisk `json:"root"`
	// Cmdline carries the root disk's dm-verity table and root hash.
	Cmdline string `json:"cmdline"`

	KernelBuild KernelBuild `json:"kernel_build"`
	RuncVersion string      `json:"runc_version"`
	// Files are the regular files on the root disk (and in the Debian
	// flavour's initrd, the agent there being /init), sorted by path.
	Files []File `json:"files"`

	Measurements Measurements  `json:"measurements"`
	Debian       DebianFlavour `json:"debian"`
}

// RootDisk is the read-only root disk beside the manifest.
type RootDisk struct {
	File string `json:"file"`
	FS   string `json:"fs"`
	rootimg.Image
}

// KernelBuild identifies how Cloak's kernel was built (build/kbuild);
// SourcePackage "prebuilt" (and nothing else) for a kernel given to the build.
type KernelBuild struct {
	SourcePackage   string `json:"source_package"`
	SourceVersion   string `json:"source_version,omitempty"`
	SourceDebSHA256 string `json:"source_deb_sha256,omitempty"`
	FragmentSHA256  string `json:"fragment_sha256,omitempty"`
	Compiler        string `json:"compiler,omitempty"`
}

// DebianFlavour is the image for Debian's cloud kernel: the same userland in
// an initrd, with the kernel modules the guest loads.
type DebianFlavour struct {
	Kernel        Artifact      `json:"kernel"`
	Initrd        Artifact      `json:"initrd"`
	Cmdline       string        `json:"cmdline"`
	KernelPackage KernelPackage `json:"kernel_package"`
	// Modules are the module files in /lib/modules, in load order.
	Modules []string `json:"modules"`
	// Measurements holds the emulated value only: the SNP and TDX
	// reference values are computed for the default boot.
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

// File is one regular file of the guest's userland.
type File struct {
	Path   string `json:"path"`
	Mode   string `json:"mode"` // octal permission bits, e.g. "0755"
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Measurements are the expected launch measurements, hex encoded.
type Measurements struct {
	// Emulated is measurements.EmulatedLaunchDigest of kernel, initrd
	// (none: empty) and cmdline.
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
		return fmt.Errorf("schema %q, want %q (an image built by another Cloak version: rebuild it with make image)", m.Schema, Schema)
	}
	for name, a := range map[string]Artifact{"kernel": m.Kernel, "debian.kernel": m.Debian.Kernel, "debian.initrd": m.Debian.Initrd} {
		if err := a.validate(name); err != nil {
			return err
		}
	}
	if m.Root.File != RootFile || m.Root.FS != "erofs" {
		return fmt.Errorf("root: file %q fs %q, want %q erofs", m.Root.File, m.Root.FS, RootFile)
	}
	if m.Root.DataSize <= 0 || m.Root.DataSize%rootimg.BlockSize != 0 || m.Root.Size < m.Root.DataSize {
		return fmt.Errorf("root: data size %d, size %d: want a positive multiple of %d, then the hash tree", m.Root.DataSize, m.Root.Size, rootimg.BlockSize)
	}
	for name, v := range map[string]string{"root sha256": m.Root.SHA256, "root root_hash": m.Root.RootHash, "root salt": m.Root.Salt} {
		if err := checkHex(name, v, sha256.Size); err != nil {
			return err
		}
	}
	for name, c := range map[string]string{"cmdline": m.Cmdline, "debian.cmdline": m.Debian.Cmdline} {
		if len(c) > maxCmdline || strings.ContainsRune(c, 0) {
			return fmt.Errorf("%s: longer than %d bytes or holds a NUL", name, maxCmdline)
		}
	}
	for name, e := range map[string]string{"measurements.emulated": m.Measurements.Emulated, "debian.measurements.emulated": m.Debian.Measurements.Emulated} {
		if err := checkHex(name, e, sha512.Size384); err != nil {
			return err
		}
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
	if m.Debian.Measurements.SNP != nil || m.Debian.Measurements.TDX != nil {
		return errors.New("debian.measurements: only the emulated value is computed for the Debian flavour")
	}
	if len(m.Debian.Modules) > maxListLen || len(m.Files) > maxListLen {
		return fmt.Errorf("more than %d modules or files", maxListLen)
	}
	for _, mod := range m.Debian.Modules {
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

func (a Artifact) validate(name string) error {
	if a.Size <= 0 {
		return fmt.Errorf("%s size %d", name, a.Size)
	}
	if err := checkHex(name+" sha256", a.SHA256, sha256.Size); err != nil {
		return err
	}
	return checkHex(name+" sha384", a.SHA384, sha512.Size384)
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
	// Emulated and DebianEmulated are the emulated launch measurements
	// recomputed from the files and the manifest's command lines, hex
	// encoded.
	Emulated, DebianEmulated string
	// Mismatches name each thing that differs from the manifest; empty
	// means the directory matches its manifest.
	Mismatches []string
}

// VerifyDir recomputes the digests of DIR's kernels, initrd and root disk
// (every block against its dm-verity root hash, with veritysetup) and the
// emulated launch measurements, checks that the command line carries the
// root disk's table, and compares everything with DIR's manifest.
func VerifyDir(ctx context.Context, dir string) (*Verification, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	v := &Verification{Manifest: m}
	var empty [sha512.Size384]byte
	sha512.New384().Sum(empty[:0])
	check := func(name string, want Artifact) [sha512.Size384]byte {
		got, s384, err := hashFile(filepath.Join(dir, name))
		if err != nil {
			v.Mismatches = append(v.Mismatches, err.Error())
		} else if got != want {
			v.Mismatches = append(v.Mismatches, fmt.Sprintf("%s: size %d sha384 %s, manifest says size %d sha384 %s",
				name, got.Size, got.SHA384, want.Size, want.SHA384))
		}
		return s384
	}
	k384 := check(KernelFile, m.Kernel)
	v.Emulated = hex.EncodeToString(measurements.EmulatedLaunchDigestFromHashes(k384, empty, sha512.Sum384([]byte(m.Cmdline))))
	dk384 := check(filepath.Join(DebianDir, KernelFile), m.Debian.Kernel)
	di384 := check(filepath.Join(DebianDir, InitrdFile), m.Debian.Initrd)
	v.DebianEmulated = hex.EncodeToString(measurements.EmulatedLaunchDigestFromHashes(dk384, di384, sha512.Sum384([]byte(m.Debian.Cmdline))))

	rootPath := filepath.Join(dir, RootFile)
	if got, _, err := hashFile(rootPath); err != nil {
		v.Mismatches = append(v.Mismatches, err.Error())
	} else if got.Size != m.Root.Size || got.SHA256 != m.Root.SHA256 {
		v.Mismatches = append(v.Mismatches, fmt.Sprintf("%s: size %d sha256 %s, manifest says size %d sha256 %s",
			RootFile, got.Size, got.SHA256, m.Root.Size, m.Root.SHA256))
	}
	if err := rootimg.Verify(ctx, rootPath, &m.Root.Image); err != nil {
		v.Mismatches = append(v.Mismatches, err.Error())
	}
	if args := m.Root.KernelArgs(AgentPath); !strings.Contains(m.Cmdline, args) {
		v.Mismatches = append(v.Mismatches, fmt.Sprintf("cmdline does not mount the manifest's root disk: it lacks %q", args))
	}
	if v.Emulated != m.Measurements.Emulated {
		v.Mismatches = append(v.Mismatches, fmt.Sprintf("emulated measurement %s, manifest says %s", v.Emulated, m.Measurements.Emulated))
	}
	if v.DebianEmulated != m.Debian.Measurements.Emulated {
		v.Mismatches = append(v.Mismatches, fmt.Sprintf("debian emulated measurement %s, manifest says %s", v.DebianEmulated, m.Debian.Measurements.Emulated))
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
