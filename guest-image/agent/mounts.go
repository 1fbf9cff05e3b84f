package agent

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cloak-containers/cloak/agentapi"
)

// Limits on a container's copied files and mount sources. The host copies
// at most 1024 entries and 3 MiB of data (shim/mounts); these leave room.
const (
	maxContainerFiles = 1024
	maxFilesBytes     = 3<<20 + 512<<10
	maxFilePath       = 1024
	maxMountSources   = 256
	maxFSTag          = 36
	// shmSize is the pod's /dev/shm, as containerd's CRI sizes it.
	shmSize = "65536k"
)

// Guest directories of the mount sources: copied files per container (in
// its bundle, removed with it), emptyDir and /dev/shm per pod under the
// sandbox's shared dir, and the virtio-fs mount of the host's share.
func (c *container) filesDir() string  { return filepath.Join(c.bundle, "files") }
func (s *Server) virtiofsDir() string  { return filepath.Join(s.cfg.StateDir, "virtiofs") }
func (s *Server) emptyDirRoot() string { return filepath.Join(s.sharedDir(), "emptydir") }
func (s *Server) shmRoot() string      { return filepath.Join(s.sharedDir(), "shm") }

// checkRelPath validates a host-given path relative to a guest directory:
// clean, not absolute, no "..", bounded.
func checkRelPath(what, p string) error {
	if p == "" || len(p) > maxFilePath || path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return invalid("%s %q: want a clean relative path of at most %d bytes without ..", what, truncate(p), maxFilePath)
	}
	return nil
}

// checkContainerFiles bounds and validates CreateContainer's files.
func checkContainerFiles(files []*agentapi.ContainerFile) error {
	if len(files) > maxContainerFiles {
		return invalid("%d files to copy, limit %d", len(files), maxContainerFiles)
	}
	seen := make(map[string]bool, len(files))
	total := 0
	for _, f := range files {
		if err := checkRelPath("file path", f.GetPath()); err != nil {
			return err
		}
		if seen[f.GetPath()] {
			return invalid("file path %q appears twice", truncate(f.GetPath()))
		}
		seen[f.GetPath()] = true
		total += len(f.GetData()) + len(f.GetPath()) + len(f.GetSymlink())
		if total > maxFilesBytes {
			return invalid("files to copy exceed %d bytes", maxFilesBytes)
		}
		kinds := 0
		for _, k := range []bool{f.GetDir(), f.GetSymlink() != ""} {
			if k {
				kinds++
			}
		}
		if kinds > 1 || (kinds == 1 && len(f.GetData()) > 0) {
			return invalid("file %q: a directory or symlink has no data, and an entry is one of file, directory or symlink", truncate(f.GetPath()))
		}
		if f.GetSymlink() != "" && !agentapi.DescendingLink(f.GetSymlink()) {
			return policyErr("file %q: symlink target %q is refused: it must stay below the link (relative, no . or ..)", truncate(f.GetPath()), truncate(f.GetSymlink()))
		}
	}
	return nil
}

// mountSources validates CreateContainer's mount_sources and returns the
// guest path of each (by mount index). Shared paths are resolved in the
// virtio-fs mount and must stay inside it.
func (s *Server) mountSources(c *container, req *agentapi.CreateContainerRequest) (map[int]string, error) {
	srcs := req.GetMountSources()
	if len(srcs) > maxMountSources {
		return nil, invalid("%d mount sources, limit %d", len(srcs), maxMountSources)
	}
	copied := map[string]bool{}
	for _, f := range req.GetFiles() {
		copied[f.GetPath()] = true
	}
	out := make(map[int]string, len(srcs))
	for _, ms := range srcs {
		i := int(ms.GetMountIndex())
		if _, dup := out[i]; dup {
			return nil, invalid("mount %d has two sources", i)
		}
		var p string
		switch src := ms.GetSource().(type) {
		case *agentapi.MountSource_Files:
			if err := checkRelPath("files source", src.Files); err != nil {
				return nil, err
			}
			if !copied[src.Files] {
				return nil, invalid("mount %d: files source %q is not among the copied files", i, truncate(src.Files))
			}
			p = filepath.Join(c.filesDir(), src.Files)
		case *agentapi.MountSource_GuestDir:
			var err error
			if p, err = s.guestDirPath(src.GuestDir); err != nil {
				return nil, err
			}
		case *agentapi.MountSource_Shared:
			var err error
			if p, err = s.sharedSource(src.Shared); err != nil {
				return nil, err
			}
		default:
			return nil, invalid("mount %d: source has no kind", i)
		}
		out[i] = p
	}
	return out, nil
}

func (s *Server) guestDirPath(d *agentapi.GuestDir) (string, error) {
	if err := checkID("pod", d.GetPod()); err != nil {
		return "", err
	}
	switch d.GetKind() {
	case agentapi.GuestDir_KIND_EMPTY_DIR:
		if err := checkID("emptyDir volume", d.GetVolume()); err != nil {
			return "", err
		}
		return filepath.Join(s.emptyDirRoot(), d.GetPod(), d.GetVolume()), nil
	case agentapi.GuestDir_KIND_SHM:
		return filepath.Join(s.shmRoot(), d.GetPod()), nil
	default:
		return "", invalid("guest dir kind %v: want KIND_EMPTY_DIR or KIND_SHM", d.GetKind())
	}
}

// sharedSource resolves a path in the virtio-fs share. The host writes that
// directory, so links in it are followed here and the result must still be
// inside the share: runc binds the resolved path.
func (s *Server) sharedSource(rel string) (string, error) {
	if err := checkRelPath("shared source", rel); err != nil {
		return "", err
	}
	s.mu.Lock()
	mounted := s.sharedFS
	s.mu.Unlock()
	if !mounted {
		return "", agentErr(codes.FailedPrecondition, agentapi.ReasonInvalidRequest, "shared source %q: this sandbox has no shared directory (CreateSandbox had no shared_fs_tag)", truncate(rel))
	}
	p, err := filepath.EvalSymlinks(filepath.Join(s.virtiofsDir(), rel))
	if err != nil {
		return "", invalid("shared source %q: %v", truncate(rel), err)
	}
	if !strings.HasPrefix(p, s.virtiofsDir()+"/") {
		return "", policyErr("shared source %q resolves to %q, outside the shared directory", truncate(rel), truncate(p))
	}
	return p, nil
}

// applySources sets the guest sources of the spec's bind mounts that have
// one; those exact paths become allowed bind sources.
func applySources(s *specs.Spec, rules *specRules) error {
	for i, p := range rules.sources {
		if i < 0 || i >= len(s.Mounts) {
			return invalid("mount source for mount %d, but the spec has %d mounts", i, len(s.Mounts))
		}
		m := &s.Mounts[i]
		if m.Type != "bind" && !hasOption(m.Options, "bind") && !hasOption(m.Options, "rbind") {
			return invalid("mount %d (%q) has a mount source but is not a bind mount", i, truncate(m.Destination))
		}
		m.Source = p
		rules.bindFiles = append(rules.bindFiles, p)
	}
	return nil
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

// writeFiles creates the copied files under the container's files dir
// through an os.Root: no entry can be written outside it.
func writeFiles(dir string, files []*agentapi.ContainerFile) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, f := range files {
		p := f.GetPath()
		mode := os.FileMode(f.GetMode() & 0o777)
		if parent := path.Dir(p); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		switch {
		case f.GetDir():
			if err := root.Mkdir(p, mode); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("%s: %w", p, err)
			}
		case f.GetSymlink() != "":
			if err := root.Symlink(f.GetSymlink(), p); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			continue
		default:
			file, err := root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			_, err = file.Write(f.GetData())
			if cerr := file.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		// Exactly the host's permission bits, whatever the umask.
		if err := root.Chmod(p, mode); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

// makeGuestDirs creates the pod's emptyDir and /dev/shm directories the
// container uses; the first container of the pod mounts the tmpfs of
// /dev/shm and of memory-backed emptyDirs, later ones share them.
func (s *Server) makeGuestDirs(req *agentapi.CreateContainerRequest, sources map[int]string) error {
	for _, ms := range req.GetMountSources() {
		d := ms.GetGuestDir()
		if d == nil {
			continue
		}
		dir := sources[int(ms.GetMountIndex())]
		shm := d.GetKind() == agentapi.GuestDir_KIND_SHM
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		if !shm && !d.GetMemory() {
			// Like kubelet's emptyDir: writable by any container user.
			if err := os.Chmod(dir, 0o777); err != nil {
				return err
			}
			continue
		}
		mounted, err := isMountPoint(dir)
		if err != nil || mounted {
			return err
		}
		opts := "mode=0777"
		if shm {
			opts = "mode=1777,size=" + shmSize
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, opts); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
		}
	}
	return nil
}

// isMountPoint reports whether dir is on another device than its parent.
func isMountPoint(dir string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(dir), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev, nil
}

// checkFSTag validates CreateSandbox's shared_fs_tag ("" = none).
func checkFSTag(tag string) error {
	if len(tag) > maxFSTag || strings.ContainsFunc(tag, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	}) {
		return invalid("shared_fs_tag %q: want up to %d letters, digits, '.', '-' and '_'", truncate(tag), maxFSTag)
	}
	return nil
}

// mountSharedFS mounts the host's virtio-fs share once per sandbox.
func (s *Server) mountSharedFS(tag string) error {
	if err := os.MkdirAll(s.virtiofsDir(), 0o700); err != nil {
		return agentErr(codes.Internal, agentapi.ReasonRuntime, "shared directory: %v", err)
	}
	if err := unix.Mount(tag, s.virtiofsDir(), "virtiofs", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return agentErr(codes.FailedPrecondition, agentapi.ReasonInvalidRequest, "mount the host's shared directory (virtio-fs tag %q): %v", tag, err)
	}
	return nil
}
