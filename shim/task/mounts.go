package task

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/shim/config"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
	"github.com/cloak-containers/cloak/shim/mounts"
)

// containerRequest is the CreateContainer request for a task: its spec as
// the guest gets it, the host files copied into the guest and where each
// bind mount takes its source there (shim/mounts). Host paths to share are
// bound into the VM's shared directory first. A spec without bind mounts
// goes to the guest as it is.
func containerRequest(cfg config.Config, sb *sandbox, id, image string, guestRaw []byte) (*agentapi.CreateContainerRequest, error) {
	req := &agentapi.CreateContainerRequest{ContainerId: id, Image: image, OciSpec: guestRaw}
	var spec specs.Spec
	if err := json.Unmarshal(guestRaw, &spec); err != nil {
		return nil, fmt.Errorf("guest spec: %w", err)
	}
	opts := mounts.Options{Share: sb.share != nil, NoShareReason: noShareReason(cfg)}
	if !opts.Share && opts.NoShareReason == "" {
		opts.NoShareReason = "the pod's VM was started without a shared directory"
	}
	plan, err := mounts.New(id, &spec, opts)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w: %w", id, err, errdefs.ErrInvalidArgument)
	}
	if len(plan.Mounts) == 0 {
		return req, nil
	}
	if req.Files, err = plan.Collect(); err != nil {
		return nil, fmt.Errorf("container %s: %w: %w", id, err, errdefs.ErrInvalidArgument)
	}
	for _, m := range plan.Shares() {
		if err := sb.share.bind(m.Source, plan.SharedPath(m), m.ReadOnly); err != nil {
			return nil, fmt.Errorf("container %s: share mount %s (host %s): %w", id, m.Destination, m.Source, err)
		}
	}
	if req.OciSpec, err = plan.GuestSpec(); err != nil {
		return nil, err
	}
	req.MountSources = plan.Sources()
	return req, nil
}

// noShareReason says why the handler shares no host directory with its
// guests, and what to do; "" when it does.
func noShareReason(cfg config.Config) string {
	switch {
	case cfg.Confidential():
		return fmt.Sprintf("tee = %q is a confidential handler, whose guests get no host directory (the host must not see or change what they use); use an emptyDir, configMap or secret volume, or a non-confidential cloak handler", cfg.TEE)
	case cfg.SharedFS != config.SharedFSVirtioFS:
		return fmt.Sprintf("shared_fs = %q in the cloak configuration; set shared_fs = \"virtio-fs\" (needs virtiofsd) to share host directories, or use an emptyDir, configMap or secret volume", cfg.SharedFS)
	}
	if _, err := os.Stat(cfg.Virtiofsd); err != nil {
		return fmt.Sprintf("shared_fs = \"virtio-fs\" needs virtiofsd, which is missing (%v); install virtiofsd or set virtiofsd in the cloak configuration to its path", err)
	}
	return ""
}

// hostShare is a VM's shared directory on the host: virtiofsd serves it to
// the guest, and each shared mount of a container is bound below it as
// CONTAINER/m<index> (like Kata's per-sandbox shared dir). It lives next to
// the VM's run dir, not in it: the run dir is removed recursively, which
// must never reach into a bind mount.
type hostShare struct{ dir string }

// shareDir is the shared directory of the VM whose run dir is runDir.
func shareDir(runDir string) string { return runDir + "-fs" }

// startShare prepares the shared directory of a VM when the handler shares
// host directories (tee = "none", shared_fs = "virtio-fs", virtiofsd
// present), and sets qcfg and the sandbox request to use it; nil when it
// does not.
func startShare(cfg config.Config, qcfg *qemu.Config, req *agentapi.CreateSandboxRequest) (*hostShare, error) {
	if noShareReason(cfg) != "" {
		return nil, nil
	}
	dir := shareDir(qcfg.RunDir)
	if err := cleanupShare(dir); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("shared dir: %w", err)
	}
	// A shared mount of its own: binds made under it after virtiofsd
	// started reach virtiofsd's mount namespace by propagation.
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("shared dir: bind %s: %w", dir, err)
	}
	h := &hostShare{dir: dir}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		_ = h.close()
		return nil, fmt.Errorf("shared dir: make %s shared: %w", dir, err)
	}
	qcfg.SharedFS = qemu.SharedFS{Dir: dir, Tag: qemu.DefaultSharedFSTag, Virtiofsd: cfg.Virtiofsd}
	req.SharedFsTag = qemu.DefaultSharedFSTag
	return h, nil
}

// bind makes host path src appear at rel in the shared directory, read-only
// if asked (enforced by the host's mount, whatever the guest does).
func (h *hostShare) bind(src, rel string, readOnly bool) error {
	target := filepath.Join(h.dir, rel)
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if st.IsDir() {
		err = os.Mkdir(target, 0o700)
	} else {
		var f *os.File
		if f, err = os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			err = f.Close()
		}
	}
	if err != nil {
		return err
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	if readOnly {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", target, err)
		}
	}
	return nil
}

// unbindContainer removes the binds of container id (after the guest
// removed the container): they must not outlive it while the VM runs on.
func (h *hostShare) unbindContainer(id string) error {
	if h == nil || id == "" || filepath.Base(id) != id {
		return nil
	}
	return cleanupShare(filepath.Join(h.dir, id))
}

// close unmounts and removes the shared directory (after the VM stopped).
func (h *hostShare) close() error {
	if h == nil {
		return nil
	}
	return cleanupShare(h.dir)
}

// cleanupShare unmounts everything under dir and dir itself, then removes
// what is left: the empty mount points. Nothing is removed while a mount
// remains, so host files behind a bind are never touched.
func cleanupShare(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	points, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	// Deepest first.
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("shared dir: unmount %s: %w", p, err)
		}
	}
	if left, err := mountsUnder(dir); err != nil || len(left) > 0 {
		return fmt.Errorf("shared dir %s: mounts left after unmount (%v), not removing it: %v", dir, err, left)
	}
	var paths []string
	if err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}); err != nil {
		return fmt.Errorf("shared dir: %w", err)
	}
	for i := len(paths) - 1; i >= 0; i-- {
		if err := os.Remove(paths[i]); err != nil {
			return fmt.Errorf("shared dir: %w", err)
		}
	}
	return nil
}

// mountsUnder lists the mount points at or below dir in this mount
// namespace.
func mountsUnder(dir string) ([]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(infos))
	for _, m := range infos {
		out = append(out, m.Mountpoint)
	}
	return out, nil
}
