package agent

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/guest-image/hostinput"
)

// shmSize is the pod's /dev/shm, as containerd's CRI sizes it.
const shmSize = "65536k"

// Guest directories of the mount sources: copied files per container (in
// its bundle, removed with it), emptyDir and /dev/shm per pod under the
// sandbox's shared dir, and the virtio-fs mount of the host's share.
func (c *container) filesDir() string  { return filepath.Join(c.bundle, "files") }
func (s *Server) virtiofsDir() string  { return filepath.Join(s.cfg.StateDir, "virtiofs") }
func (s *Server) emptyDirRoot() string { return filepath.Join(s.sharedDir(), "emptydir") }
func (s *Server) shmRoot() string      { return filepath.Join(s.sharedDir(), "shm") }

// mountSources returns the guest path of each of CreateContainer's
// mount_sources (by mount index), which hostinput.MountSources validated.
// Shared paths are resolved in the virtio-fs mount and must stay inside it.
func (s *Server) mountSources(c *container, req *agentapi.CreateContainerRequest) (map[int]string, error) {
	if err := hostinput.MountSources(req); err != nil {
		return nil, err
	}
	out := make(map[int]string, len(req.GetMountSources()))
	for _, ms := range req.GetMountSources() {
		var p string
		switch src := ms.GetSource().(type) {
		case *agentapi.MountSource_Files:
			p = filepath.Join(c.filesDir(), src.Files)
		case *agentapi.MountSource_GuestDir:
			p = s.guestDirPath(src.GuestDir)
		case *agentapi.MountSource_Shared:
			var err error
			if p, err = s.sharedSource(src.Shared); err != nil {
				return nil, err
			}
		}
		out[int(ms.GetMountIndex())] = p
	}
	return out, nil
}

func (s *Server) guestDirPath(d *agentapi.GuestDir) string {
	if d.GetKind() == agentapi.GuestDir_KIND_SHM {
		return filepath.Join(s.shmRoot(), d.GetPod())
	}
	return filepath.Join(s.emptyDirRoot(), d.GetPod(), d.GetVolume())
}

// sharedSource resolves a path in the virtio-fs share. The host writes that
// directory, so links in it are followed here and the result must still be
// inside the share: runc binds the resolved path.
func (s *Server) sharedSource(rel string) (string, error) {
	s.mu.Lock()
	mounted := s.sharedFS
	s.mu.Unlock()
	if !mounted {
		return "", agentErr(codes.FailedPrecondition, agentapi.ReasonInvalidRequest, "shared source %q: this sandbox has no shared directory (CreateSandbox had no shared_fs_tag)", hostinput.Truncate(rel))
	}
	p, err := filepath.EvalSymlinks(filepath.Join(s.virtiofsDir(), rel))
	if err != nil {
		return "", invalid("shared source %q: %v", hostinput.Truncate(rel), err)
	}
	if !strings.HasPrefix(p, s.virtiofsDir()+"/") {
		return "", policyErr("shared source %q resolves to %q, outside the shared directory", hostinput.Truncate(rel), hostinput.Truncate(p))
	}
	return p, nil
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
