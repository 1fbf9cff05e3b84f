// Package initramfs assembles a Linux initramfs: an in-memory file tree
// written as a reproducible newc cpio archive and compressed
// deterministically, so that the same inputs always give the same bytes.
//
// The newc encoding itself comes from github.com/cavaliergopher/cpio (a
// small, dependency-free, stable writer of exactly that format); this package
// adds what makes the archive reproducible and bootable: entries sorted by
// path, parents before children, fixed inode numbers, mtime 0, owner root.
package initramfs

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"
	"golang.org/x/sys/unix"
)

// Archive is a file tree for an initramfs. The zero value is empty and ready.
type Archive struct {
	entries map[string]entry
}

type entry struct {
	mode cpio.FileMode // type and permission bits
	data []byte        // file content or symlink target
}

// Dir adds a directory (and its missing parents, mode 0755).
func (a *Archive) Dir(name string, perm fs.FileMode) error {
	return a.add(name, entry{mode: cpio.TypeDir | cpio.FileMode(perm&0o7777)})
}

// File adds a regular file (and its missing parents, mode 0755).
func (a *Archive) File(name string, perm fs.FileMode, data []byte) error {
	return a.add(name, entry{mode: cpio.TypeReg | cpio.FileMode(perm&0o7777), data: data})
}

// Symlink adds a symbolic link to target.
func (a *Archive) Symlink(name, target string) error {
	if target == "" {
		return fmt.Errorf("symlink %s: empty target", name)
	}
	return a.add(name, entry{mode: cpio.TypeSymlink | 0o777, data: []byte(target)})
}

// Len returns the number of entries, directories included.
func (a *Archive) Len() int { return len(a.entries) }

// clean turns "/usr/bin/runc" into "usr/bin/runc", the spelling initramfs
// archives use, and refuses names that could escape the root.
func clean(name string) (string, error) {
	c := strings.TrimPrefix(path.Clean("/"+name), "/")
	if c == "" || c != strings.TrimPrefix(name, "/") {
		return "", fmt.Errorf("initramfs path %q: want a clean absolute or relative path below /", name)
	}
	return c, nil
}

func (a *Archive) add(name string, e entry) error {
	p, err := clean(name)
	if err != nil {
		return err
	}
	if a.entries == nil {
		a.entries = map[string]entry{}
	}
	if old, ok := a.entries[p]; ok {
		// Adding a directory twice is harmless (parents are added
		// implicitly); anything else would silently drop content.
		if old.mode&cpio.ModeType == cpio.TypeDir && e.mode&cpio.ModeType == cpio.TypeDir {
			a.entries[p] = e
			return nil
		}
		return fmt.Errorf("initramfs path %q added twice", p)
	}
	for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
		old, ok := a.entries[dir]
		if !ok {
			a.entries[dir] = entry{mode: cpio.TypeDir | 0o755}
			continue
		}
		if old.mode&cpio.ModeType != cpio.TypeDir {
			return fmt.Errorf("initramfs path %q: parent %q is not a directory", p, dir)
		}
	}
	a.entries[p] = e
	return nil
}

// Cpio returns the uncompressed newc archive. Entries are sorted by path
// (byte order puts every directory before its children), inode numbers count
// up from 1 in that order, and mtime, uid and gid are 0.
func (a *Archive) Cpio() ([]byte, error) {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	for i, n := range names {
		e := a.entries[n]
		hdr := &cpio.Header{
			Name:  n,
			Mode:  e.mode,
			Size:  int64(len(e.data)),
			Inode: int64(i + 1),
			Links: 1,
		}
		if e.mode&cpio.ModeType == cpio.TypeDir {
			hdr.Links = 2
		}
		if err := w.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("cpio header %s: %w", n, err)
		}
		if _, err := w.Write(e.data); err != nil {
			return nil, fmt.Errorf("cpio data %s: %w", n, err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("cpio trailer: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteTree writes the tree below dir, which must be empty or missing, in
// the same order as Cpio, with every timestamp at the epoch, so that a
// filesystem image made from dir (build/rootimg) is as reproducible as the
// archive. Owners are left to the image tool (mkfs.erofs --all-root).
func (a *Archive) WriteTree(dir string) error {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, n := range names {
		e := a.entries[n]
		p := filepath.Join(dir, filepath.FromSlash(n))
		perm := fs.FileMode(e.mode & 0o777)
		var err error
		switch e.mode & cpio.ModeType {
		case cpio.TypeDir:
			err = os.Mkdir(p, perm)
		case cpio.TypeReg:
			err = os.WriteFile(p, e.data, perm)
		case cpio.TypeSymlink:
			err = os.Symlink(string(e.data), p)
		}
		if err != nil {
			return fmt.Errorf("write tree: %w", err)
		}
		if e.mode&cpio.ModeType != cpio.TypeSymlink {
			// WriteFile and Mkdir apply the umask; sticky and setuid
			// bits need chmod too.
			if err := os.Chmod(p, fileMode(e.mode)); err != nil {
				return fmt.Errorf("write tree: %w", err)
			}
		}
	}
	// Timestamps last, children before parents: writing a child changes
	// its directory's mtime.
	epoch := time.Unix(0, 0)
	for i := len(names) - 1; i >= 0; i-- {
		p := filepath.Join(dir, filepath.FromSlash(names[i]))
		if err := unix.Lutimes(p, []unix.Timeval{unix.NsecToTimeval(epoch.UnixNano()), unix.NsecToTimeval(epoch.UnixNano())}); err != nil {
			return fmt.Errorf("write tree: %s: %w", names[i], err)
		}
	}
	return nil
}

// fileMode converts cpio permission bits (with setuid, setgid, sticky) to
// Go's.
func fileMode(m cpio.FileMode) fs.FileMode {
	perm := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		perm |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		perm |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		perm |= fs.ModeSticky
	}
	return perm
}
