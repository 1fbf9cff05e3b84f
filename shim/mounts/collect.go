package mounts

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// Collect reads what the plan copies: each small file, and each kubelet
// volume directory with its files, subdirectories and symlinks. The copy is
// a snapshot: later changes on the host (a configMap update) do not reach
// the guest. Bounded by MaxFileSize, MaxTotalSize and MaxFileCount; a
// volume's symlinks must stay inside it (kubelet's "..data" links do).
func (p *Plan) Collect() ([]*agentapi.ContainerFile, error) {
	c := collector{}
	for _, m := range p.Mounts {
		var err error
		switch m.Kind {
		case KindCopyFile:
			err = c.file(m.Name, m.Source)
		case KindCopyDir:
			err = c.dir(m.Name, m.Source)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("mount %s (host %s): copy into the guest: %w", m.Destination, m.Source, err)
		}
	}
	return c.files, nil
}

type collector struct {
	files []*agentapi.ContainerFile
	total int64
}

func (c *collector) add(f *agentapi.ContainerFile) error {
	if len(c.files) >= MaxFileCount {
		return fmt.Errorf("more than %d files to copy for one container", MaxFileCount)
	}
	if len(f.Path) > maxPathLength {
		return fmt.Errorf("path %.80q... is longer than %d bytes", f.Path, maxPathLength)
	}
	c.total += int64(len(f.Data)) + int64(len(f.Path)) + int64(len(f.Symlink))
	if c.total > MaxTotalSize {
		return fmt.Errorf("more than %d bytes to copy for one container: use fewer or smaller files, or a volume the guest does not copy", MaxTotalSize)
	}
	c.files = append(c.files, f)
	return nil
}

// file copies the regular file at src (following links, as a bind would).
func (c *collector) file(name, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	data, mode, err := readRegular(f)
	if err != nil {
		return err
	}
	return c.add(&agentapi.ContainerFile{Path: name, Mode: mode, Data: data})
}

// dir copies the tree at src through an os.Root, so no link leads the
// reads out of it, and keeps its symlinks as links.
func (c *collector) dir(name, src string) error {
	root, err := os.OpenRoot(src)
	if err != nil {
		return err
	}
	defer root.Close()
	st, err := root.Stat(".")
	if err != nil {
		return err
	}
	if err := c.add(&agentapi.ContainerFile{Path: name, Mode: uint32(st.Mode().Perm()), Dir: true}); err != nil {
		return err
	}
	return fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		dst := name + "/" + p
		switch t := d.Type(); {
		case t.IsDir():
			info, err := d.Info()
			if err != nil {
				return err
			}
			return c.add(&agentapi.ContainerFile{Path: dst, Mode: uint32(info.Mode().Perm()), Dir: true})
		case t&fs.ModeSymlink != 0:
			target, err := root.Readlink(p)
			if err != nil {
				return err
			}
			if !agentapi.DescendingLink(target) {
				return fmt.Errorf("symlink %s -> %s leaves its directory: only links that stay inside the volume (like kubelet's ..data) are copied", p, target)
			}
			return c.add(&agentapi.ContainerFile{Path: dst, Mode: 0o777, Symlink: target})
		case t.IsRegular():
			f, err := root.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			data, mode, err := readRegular(f)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			return c.add(&agentapi.ContainerFile{Path: dst, Mode: mode, Data: data})
		default:
			return fmt.Errorf("%s is a %s: only files, directories and links are copied", p, t)
		}
	})
}

// readRegular reads a regular file of at most MaxFileSize bytes.
func readRegular(f *os.File) ([]byte, uint32, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, 0, err
	}
	if len(data) > MaxFileSize {
		return nil, 0, errors.New("larger than the copy limit of 1 MiB per file")
	}
	return data, uint32(st.Mode().Perm()), nil
}
