// Package mounts decides how each mount of a task's OCI spec reaches the
// guest, where the host's paths do not exist: small host files and
// kubelet's configMap/secret/projected/downwardAPI volumes are copied,
// emptyDir volumes and the pod's /dev/shm live in the guest, other host
// paths are shared over virtio-fs (non-confidential handlers only) or
// refused, and kernel filesystems (proc, tmpfs, ...) pass through.
//
// Plan is the decision and the guest spec; Collect reads the files to copy,
// within bounds. Neither mounts anything.
package mounts

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// Bounds on what one container copies into the guest. Kubernetes limits a
// configMap or secret to 1 MiB; the total stays well under the agent API's
// message limit (agentapi.MaxMessageSize).
const (
	MaxFileSize   = 1 << 20
	MaxTotalSize  = 3 << 20
	MaxFileCount  = 1024
	maxPathLength = 1024
)

// AnnotationSandboxID is CRI's annotation naming a container's pod sandbox.
const AnnotationSandboxID = "io.kubernetes.cri.sandbox-id"

// kubelet's volume directories: .../pods/UID/volumes/kubernetes.io~KIND/NAME.
const (
	kubeletVolumes = "/volumes/kubernetes.io~"
	kindEmptyDir   = "empty-dir"
)

// copiedVolumeKinds are the kubelet volumes whose content is copied: small,
// written by kubelet (atomic writer, "..data" links), read by the app.
var copiedVolumeKinds = map[string]bool{"configmap": true, "secret": true, "projected": true, "downward-api": true}

// Options are the handler's choices that matter for mounts.
type Options struct {
	// Share allows sharing host paths over virtio-fs.
	Share bool
	// NoShareReason says why Share is false, for the error that refuses a
	// host directory (what is wrong and what to do).
	NoShareReason string
}

// Kind is how one mount reaches the guest.
type Kind int

// Mount kinds.
const (
	// KindCopyFile copies a small regular file.
	KindCopyFile Kind = iota + 1
	// KindCopyDir copies a kubelet configMap/secret/projected/downwardAPI
	// volume directory.
	KindCopyDir
	// KindGuestDir is an emptyDir volume or the pod's /dev/shm in the guest.
	KindGuestDir
	// KindShare binds the host path into the VM's shared directory.
	KindShare
)

// Mount is the plan for one bind mount of the spec.
type Mount struct {
	Index       int // in spec.Mounts
	Kind        Kind
	Source      string // host path
	Destination string
	ReadOnly    bool
	// Name is where the mount's content goes: the top directory of its
	// copied files ("m<index>"), or its name in the shared directory.
	Name     string
	GuestDir *agentapi.GuestDir // KindGuestDir
}

// Plan is how a task's mounts reach the guest.
type Plan struct {
	ContainerID string
	// Spec is the task's spec as the guest gets it: planned bind mounts have
	// no host source any more (the agent sets the guest's).
	Spec   *specs.Spec
	Mounts []Mount
}

// PodID is the key of the pod a container belongs to: its CRI sandbox id,
// or the container itself outside a pod.
func PodID(containerID string, spec *specs.Spec) string {
	if id := spec.Annotations[AnnotationSandboxID]; id != "" {
		return id
	}
	return containerID
}

// New plans the mounts of container id's spec. It reads the sources'
// metadata on the host (file or directory, size, tmpfs); spec is not
// changed.
func New(id string, spec *specs.Spec, opts Options) (*Plan, error) {
	out := *spec
	out.Mounts = append([]specs.Mount(nil), spec.Mounts...)
	p := &Plan{ContainerID: id, Spec: &out}
	pod := PodID(id, spec)
	for i, m := range spec.Mounts {
		if !isBind(m) {
			continue
		}
		pm, err := planBind(i, m, pod, opts)
		if err != nil {
			return nil, fmt.Errorf("mount %s (host %s): %w", m.Destination, m.Source, err)
		}
		out.Mounts[i].Source = ""
		p.Mounts = append(p.Mounts, pm)
	}
	return p, nil
}

func planBind(i int, m specs.Mount, pod string, opts Options) (Mount, error) {
	pm := Mount{Index: i, Source: m.Source, Destination: m.Destination, ReadOnly: hasOption(m, "ro"), Name: "m" + strconv.Itoa(i)}
	if !path.IsAbs(m.Source) {
		return Mount{}, errors.New("the bind source must be an absolute host path")
	}
	if path.Clean(m.Destination) == "/dev/shm" {
		pm.Kind = KindGuestDir
		pm.GuestDir = &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_SHM, Pod: pod, Memory: true}
		return pm, nil
	}
	if kind, name, ok := kubeletVolume(m.Source); ok {
		switch {
		case kind == kindEmptyDir:
			pm.Kind = KindGuestDir
			pm.GuestDir = &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_EMPTY_DIR, Pod: pod, Volume: name, Memory: isTmpfs(m.Source)}
			return pm, nil
		case copiedVolumeKinds[kind]:
			st, err := os.Stat(m.Source)
			if err != nil {
				return Mount{}, err
			}
			pm.Kind = KindCopyFile
			if st.IsDir() {
				pm.Kind = KindCopyDir
			}
			return pm, nil
		}
	}
	st, err := os.Stat(m.Source)
	if err != nil {
		return Mount{}, err
	}
	if st.Mode().IsRegular() && st.Size() <= MaxFileSize {
		pm.Kind = KindCopyFile
		return pm, nil
	}
	what := "host directory"
	if !st.IsDir() {
		what = fmt.Sprintf("host file of %d bytes (files up to %d bytes are copied)", st.Size(), MaxFileSize)
		if !st.Mode().IsRegular() {
			what = "host special file (" + st.Mode().Type().String() + ")"
		}
	}
	if !opts.Share {
		return Mount{}, fmt.Errorf("a %s cannot reach the guest: %s", what, opts.NoShareReason)
	}
	pm.Kind = KindShare
	return pm, nil
}

// kubeletVolume splits a kubelet volume path into its plugin kind
// ("configmap", "empty-dir", ...) and volume name.
func kubeletVolume(src string) (kind, name string, ok bool) {
	i := strings.LastIndex(src, kubeletVolumes)
	if i < 0 {
		return "", "", false
	}
	rest := src[i+len(kubeletVolumes):]
	kind, name, _ = strings.Cut(rest, "/")
	name, _, _ = strings.Cut(name, "/")
	if kind == "" || name == "" {
		return "", "", false
	}
	return kind, name, true
}

// isTmpfs reports whether dir is on a tmpfs: kubelet mounts one for an
// emptyDir with medium Memory.
func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}

func isBind(m specs.Mount) bool {
	return m.Type == "bind" || hasOption(m, "bind") || hasOption(m, "rbind")
}

func hasOption(m specs.Mount, opt string) bool {
	for _, o := range m.Options {
		if o == opt {
			return true
		}
	}
	return false
}

// Shares are the mounts to bind into the shared directory.
func (p *Plan) Shares() []Mount {
	var out []Mount
	for _, m := range p.Mounts {
		if m.Kind == KindShare {
			out = append(out, m)
		}
	}
	return out
}

// SharedPath is where a shared mount appears in the shared directory,
// relative to it: one directory per container.
func (p *Plan) SharedPath(m Mount) string { return p.ContainerID + "/" + m.Name }

// GuestSpec is Spec as JSON, for CreateContainer.
func (p *Plan) GuestSpec() ([]byte, error) {
	raw, err := json.Marshal(p.Spec)
	if err != nil {
		return nil, fmt.Errorf("guest spec: %w", err)
	}
	return raw, nil
}

// Sources are the guest sources of the planned mounts, for CreateContainer.
func (p *Plan) Sources() []*agentapi.MountSource {
	out := make([]*agentapi.MountSource, 0, len(p.Mounts))
	for _, m := range p.Mounts {
		s := &agentapi.MountSource{MountIndex: uint32(m.Index)}
		switch m.Kind {
		case KindCopyFile, KindCopyDir:
			s.Source = &agentapi.MountSource_Files{Files: m.Name}
		case KindGuestDir:
			s.Source = &agentapi.MountSource_GuestDir{GuestDir: m.GuestDir}
		case KindShare:
			s.Source = &agentapi.MountSource_Shared{Shared: p.SharedPath(m)}
		}
		out = append(out, s)
	}
	return out
}
