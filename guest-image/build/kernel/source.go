package kernel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// SourcePackage is Debian's kernel source package; Cloak's own guest kernel
// (build/kbuild) is compiled from it.
const SourcePackage = "linux-source-6.12"

// DefaultSourceVersion is the linux-source-6.12 version Cloak's kernel is
// built from: the same upstream release as the cloud kernel Fetch picks
// today, so the boot benchmark compares configurations, not releases. It is
// pinned because the launch measurements depend on the exact bytes.
const DefaultSourceVersion = "6.12.95-1~bpo12+1"

// sourceTarball is where the source package puts the kernel tree.
const sourceTarball = "usr/src/linux-source-6.12.tar.xz"

// Source is a downloaded, checked kernel source tarball in the cache.
type Source struct {
	Package string `json:"package"`
	Version string `json:"version"`
	// DebSHA256 is the .deb's SHA-256 as apt's package index lists it.
	DebSHA256 string `json:"deb_sha256"`

	dir string
}

// Tarball returns the path of the kernel source tree (tar.xz).
func (s *Source) Tarball() string { return filepath.Join(s.dir, "linux-source-6.12.tar.xz") }

// FetchSource returns linux-source-6.12 o.Version (default
// DefaultSourceVersion) from CacheDir/linux-source/<version>/, downloading it
// with apt-get and checking it against apt's index first if needed.
func FetchSource(ctx context.Context, o Options) (*Source, error) {
	if o.CacheDir == "" {
		return nil, errors.New("kernel cache dir is empty")
	}
	version := o.Version
	if version == "" {
		version = DefaultSourceVersion
	}
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	dir := filepath.Join(o.CacheDir, "linux-source", version)
	if s, err := loadSource(dir); err == nil {
		return s, nil
	}
	c := candidate{SourcePackage, version}
	want, err := indexSHA256(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("%s %s is not in apt's index (run ci/vm-deps.sh, which adds %s): %w", SourcePackage, version, Suite, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".fetch-")
	if err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt-get download runs as _apt once it drops privileges.
	if err := os.Chmod(tmp, 0o777); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "fetching %s %s (150 MB)...\n", SourcePackage, version)
	if _, err := run(ctx, tmp, "apt-get", "download", c.name+"="+c.version); err != nil {
		return nil, fmt.Errorf("download kernel source: %w", err)
	}
	debs, err := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if err != nil || len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download left %d .deb files in %s, want 1", len(debs), tmp)
	}
	got, err := fileSHA256(debs[0])
	if err != nil {
		return nil, err
	}
	if got != want {
		return nil, fmt.Errorf("kernel source package %s: SHA-256 %s, apt index says %s", filepath.Base(debs[0]), got, want)
	}
	root := filepath.Join(tmp, "root")
	if _, err := run(ctx, "", "dpkg", "-x", debs[0], root); err != nil {
		return nil, fmt.Errorf("unpack kernel source package: %w", err)
	}
	s := &Source{Package: SourcePackage, Version: version, DebSHA256: got, dir: tmp}
	if err := os.Rename(filepath.Join(root, sourceTarball), s.Tarball()); err != nil {
		return nil, fmt.Errorf("kernel source package %s has no %s: %w", filepath.Base(debs[0]), sourceTarball, err)
	}
	if err := os.RemoveAll(root); err != nil {
		return nil, err
	}
	if err := os.Remove(debs[0]); err != nil {
		return nil, err
	}
	meta, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, metaFile), append(meta, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if s, lerr := loadSource(dir); lerr == nil {
			return s, nil
		}
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	s.dir = dir
	return s, nil
}

func loadSource(dir string) (*Source, error) {
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return nil, err
	}
	var s Source
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("kernel source cache %s: %w", dir, err)
	}
	s.dir = dir
	if _, err := os.Stat(s.Tarball()); err != nil {
		return nil, fmt.Errorf("kernel source cache %s is incomplete: %w", dir, err)
	}
	return &s, nil
}
