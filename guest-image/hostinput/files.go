package hostinput

import (
	"path"
	"strings"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// relPath validates a host-given path relative to a guest directory:
// clean, not absolute, no "..", bounded.
func relPath(what, p string) error {
	if p == "" || len(p) > maxFilePath || path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return Invalid("%s %q: want a clean relative path of at most %d bytes without ..", what, Truncate(p), maxFilePath)
	}
	return nil
}

// ContainerFiles bounds and validates CreateContainer's files: clean
// relative paths, each once, one kind per entry, links that only descend.
func ContainerFiles(files []*agentapi.ContainerFile) error {
	if len(files) > maxContainerFiles {
		return Invalid("%d files to copy, limit %d", len(files), maxContainerFiles)
	}
	seen := make(map[string]bool, len(files))
	total := 0
	for _, f := range files {
		if err := relPath("file path", f.GetPath()); err != nil {
			return err
		}
		if seen[f.GetPath()] {
			return Invalid("file path %q appears twice", Truncate(f.GetPath()))
		}
		seen[f.GetPath()] = true
		total += len(f.GetData()) + len(f.GetPath()) + len(f.GetSymlink())
		if total > maxFilesBytes {
			return Invalid("files to copy exceed %d bytes", maxFilesBytes)
		}
		kinds := 0
		for _, k := range []bool{f.GetDir(), f.GetSymlink() != ""} {
			if k {
				kinds++
			}
		}
		if kinds > 1 || (kinds == 1 && len(f.GetData()) > 0) {
			return Invalid("file %q: a directory or symlink has no data, and an entry is one of file, directory or symlink", Truncate(f.GetPath()))
		}
		if f.GetSymlink() != "" && !agentapi.DescendingLink(f.GetSymlink()) {
			return Denied("file %q: symlink target %q is refused: it must stay below the link (relative, no . or ..)", Truncate(f.GetPath()), Truncate(f.GetSymlink()))
		}
	}
	return nil
}

// MountSources bounds and validates CreateContainer's mount_sources: one
// source per mount index, each of a known kind, copied paths among the
// request's files, pod and volume names that are ids, shared paths relative
// and clean. Where a source lives in the guest is the agent's to resolve.
func MountSources(req *agentapi.CreateContainerRequest) error {
	srcs := req.GetMountSources()
	if len(srcs) > maxMountSources {
		return Invalid("%d mount sources, limit %d", len(srcs), maxMountSources)
	}
	copied := map[string]bool{}
	for _, f := range req.GetFiles() {
		copied[f.GetPath()] = true
	}
	seen := make(map[int]bool, len(srcs))
	for _, ms := range srcs {
		i := int(ms.GetMountIndex())
		if seen[i] {
			return Invalid("mount %d has two sources", i)
		}
		seen[i] = true
		switch src := ms.GetSource().(type) {
		case *agentapi.MountSource_Files:
			if err := relPath("files source", src.Files); err != nil {
				return err
			}
			if !copied[src.Files] {
				return Invalid("mount %d: files source %q is not among the copied files", i, Truncate(src.Files))
			}
		case *agentapi.MountSource_GuestDir:
			if err := guestDir(src.GuestDir); err != nil {
				return err
			}
		case *agentapi.MountSource_Shared:
			if err := relPath("shared source", src.Shared); err != nil {
				return err
			}
		default:
			return Invalid("mount %d: source has no kind", i)
		}
	}
	return nil
}

func guestDir(d *agentapi.GuestDir) error {
	if err := ID("pod", d.GetPod()); err != nil {
		return err
	}
	switch d.GetKind() {
	case agentapi.GuestDir_KIND_EMPTY_DIR:
		return ID("emptyDir volume", d.GetVolume())
	case agentapi.GuestDir_KIND_SHM:
		return nil
	default:
		return Invalid("guest dir kind %v: want KIND_EMPTY_DIR or KIND_SHM", d.GetKind())
	}
}

// FSTag validates CreateSandbox's shared_fs_tag ("" = none).
func FSTag(tag string) error {
	if len(tag) > maxFSTag || strings.ContainsFunc(tag, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	}) {
		return Invalid("shared_fs_tag %q: want up to %d letters, digits, '.', '-' and '_'", Truncate(tag), maxFSTag)
	}
	return nil
}
