package pull

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	// maxPathLength is PATH_MAX: no real rootfs path is longer.
	maxPathLength = 4096
	maxXattrs     = 64
)

// unpacker applies layers, in order, to one rootfs. Every filesystem call
// goes through an os.Root, which resolves paths with openat-style walks
// and refuses any that a symlink (planted by an earlier entry or layer)
// would lead outside the rootfs. Symlink targets are stored as data and
// never followed while writing beyond what os.Root allows.
type unpacker struct {
	root     *os.Root
	maxBytes int64
	maxFiles int
	bytes    int64
	files    int
}

func newUnpacker(dir string, opts Options) (*unpacker, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	u := &unpacker{root: root, maxBytes: opts.MaxUnpackedBytes, maxFiles: opts.MaxFiles}
	if u.maxBytes <= 0 {
		u.maxBytes = DefaultMaxUnpackedBytes
	}
	if u.maxFiles <= 0 {
		u.maxFiles = DefaultMaxFiles
	}
	return u, nil
}

func (u *unpacker) close() { u.root.Close() }

// cleanEntryPath turns a tar entry name into a path relative to the rootfs.
// Names are relative by convention; a leading "/" is tolerated, but a ".."
// element is refused outright rather than clamped, since no honest layer
// builder produces one.
func cleanEntryPath(name string) (string, error) {
	if len(name) > maxPathLength {
		return "", fmt.Errorf("entry name is %d bytes, limit is %d", len(name), maxPathLength)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("entry %q: NUL in name", name)
	}
	for _, elem := range strings.Split(name, "/") {
		if elem == ".." {
			return "", fmt.Errorf("entry %q escapes the rootfs", name)
		}
	}
	p := strings.TrimPrefix(path.Clean("/"+name), "/")
	if p == "" {
		return ".", nil
	}
	return p, nil
}

// layer applies one uncompressed layer tar. Whiteouts remove what lower
// layers put there; an opaque marker hides a directory's lower-layer
// content while keeping what this layer adds.
func (u *unpacker) layer(r io.Reader) error {
	tr := tar.NewReader(r)
	// written holds every path this layer created (and their parents), so
	// that opaque markers and whiteouts only hide lower layers.
	written := map[string]bool{}
	var opaque []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		u.files++
		if u.files > u.maxFiles {
			return fmt.Errorf("image has more than %d entries", u.maxFiles)
		}
		p, err := cleanEntryPath(hdr.Name)
		if err != nil {
			return err
		}
		dir, base := path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		if dir == "" {
			dir = "."
		}
		if base == whiteoutOpaque {
			opaque = append(opaque, dir)
			continue
		}
		if hidden, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
			target := path.Join(dir, hidden)
			if hidden == "" || hidden == "." || written[target] {
				continue
			}
			if err := u.root.RemoveAll(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("whiteout %s: %w", target, err)
			}
			continue
		}
		if err := u.entry(p, dir, hdr, tr); err != nil {
			return fmt.Errorf("entry %s: %w", hdr.Name, err)
		}
		for q := p; q != "." && !written[q]; q = path.Dir(q) {
			written[q] = true
		}
	}
	for _, dir := range opaque {
		if err := u.hideLower(dir, written); err != nil {
			return fmt.Errorf("opaque directory %s: %w", dir, err)
		}
	}
	return nil
}

func (u *unpacker) hideLower(dir string, written map[string]bool) error {
	f, err := u.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if p := path.Join(dir, n); !written[p] {
			if err := u.root.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (u *unpacker) entry(p, dir string, hdr *tar.Header, tr *tar.Reader) error {
	if p == "." {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("the rootfs itself must be a directory")
		}
		return u.attrs(p, hdr)
	}
	if err := u.root.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	existing, err := u.root.Lstat(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// A layer replaces what is there, except that a directory over a
	// directory merges.
	if existing != nil && !(existing.IsDir() && hdr.Typeflag == tar.TypeDir) {
		if err := u.root.RemoveAll(p); err != nil {
			return err
		}
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if existing == nil || !existing.IsDir() {
			if err := u.root.Mkdir(p, 0o700); err != nil {
				return err
			}
		}
	case tar.TypeReg:
		if hdr.Size < 0 || hdr.Size > u.maxBytes-u.bytes {
			return fmt.Errorf("image unpacks to more than %d bytes", u.maxBytes)
		}
		u.bytes += hdr.Size
		// O_EXCL: never write through a symlink, even one inside the root.
		f, err := u.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	case tar.TypeSymlink:
		if len(hdr.Linkname) > maxPathLength || strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return errors.New("symlink target too long or has NUL")
		}
		if err := u.root.Symlink(hdr.Linkname, p); err != nil {
			return err
		}
		return u.root.Lchown(p, hdr.Uid, hdr.Gid)
	case tar.TypeLink:
		target, err := cleanEntryPath(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hardlink target: %w", err)
		}
		return u.root.Link(target, p)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return errors.New("device nodes and FIFOs are not allowed in guest-pulled images")
	default:
		return fmt.Errorf("tar entry type %q is not supported", hdr.Typeflag)
	}
	return u.attrs(p, hdr)
}

// attrs applies ownership, then mode (chown clears set-id bits), xattrs and
// the modification time to a directory or regular file.
func (u *unpacker) attrs(p string, hdr *tar.Header) error {
	if err := u.root.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	if err := u.root.Chmod(p, hdr.FileInfo().Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		return err
	}
	if err := u.xattrs(p, hdr); err != nil {
		return err
	}
	return u.root.Chtimes(p, hdr.ModTime, hdr.ModTime)
}

// xattrs sets the PAX SCHILY.xattr records (file capabilities live there).
// os.Root has no xattr call, so the file is opened through the root and
// set by descriptor; O_NOFOLLOW because attrs only runs on files and dirs.
func (u *unpacker) xattrs(p string, hdr *tar.Header) error {
	const prefix = "SCHILY.xattr."
	n := 0
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if n++; n > maxXattrs {
			return fmt.Errorf("more than %d xattrs", maxXattrs)
		}
		f, err := u.root.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		err = unix.Fsetxattr(int(f.Fd()), attr, []byte(v), 0)
		f.Close()
		// tmpfs without user xattrs (kernels before 6.6) cannot hold them;
		// only an attribute the filesystem does not support is skipped.
		if err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("xattr %s: %w", attr, err)
		}
	}
	return nil
}
