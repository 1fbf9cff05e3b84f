// Package snapshotter is Cloak's guest-pull snapshotter: a containerd
// snapshotter (served to containerd as a proxy plugin) that makes image pulls
// for the cloak runtime handlers skip the host's layer download and unpack.
//
// containerd's unpacker prepares one snapshot per layer with the label
// containerd.io/snapshot.ref = the layer's chain ID, and skips fetching and
// applying a layer when Prepare answers "already exists" and the chain ID can
// then be found. This snapshotter answers that way for every such layer after
// committing an empty snapshot under the chain ID: containerd records the
// image as unpacked, CRI and ctr can prepare container rootfs snapshots on top
// of the chain, and the layer blobs are never fetched into the host's content
// store nor written to disk. The cloak shim never uses the host rootfs: the
// guest pulls, verifies and decrypts the image itself.
//
// Storage is containerd's native snapshotter in the root directory, so every
// snapshot is a real (empty) directory with real bind mounts.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/snapshots/native"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// TargetRefLabel is the label containerd's unpacker sets on the Prepare of a
// layer's snapshot: the chain ID the snapshot will be committed as.
const TargetRefLabel = "containerd.io/snapshot.ref"

// Snapshotter is containerd's native snapshotter with guest-pull layer
// snapshots. Everything but Prepare is the backend's.
type Snapshotter struct {
	snapshots.Snapshotter
	lock *os.File
}

// New opens (creating it if needed) the snapshotter in root. Only one
// Snapshotter may use a root at a time: the backend's database would block
// a second one forever, so New refuses it.
func New(root string) (*Snapshotter, error) {
	if root == "" {
		return nil, errors.New("snapshotter root is empty: give a directory such as /var/lib/cloak/snapshotter")
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshotter root: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(root, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open snapshotter root lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("snapshotter root %s is in use by another cloak-snapshotter: stop it or use another root", root)
		}
		return nil, fmt.Errorf("lock snapshotter root %s: %w", root, err)
	}
	backend, err := native.NewSnapshotter(root)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("open native snapshotter in %s: %w", root, err)
	}
	return &Snapshotter{Snapshotter: backend, lock: lock}, nil
}

// Prepare creates an active snapshot, except for a layer being unpacked
// (TargetRefLabel set): then it commits an empty snapshot named by the
// label's chain ID and reports that the target already exists, which makes
// containerd skip the layer's download and unpack.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	target := info.Labels[TargetRefLabel]
	if target == "" {
		if isExtractKey(key) {
			// A client-side unpack (ctr run of an image pulled with another
			// snapshotter) gives no target: the applier would write the
			// layer's files here.
			return nil, fmt.Errorf("cloak snapshotter does not unpack layers on the host (snapshot %q has no %s label): pull the image with this snapshotter (ctr image pull --snapshotter cloak, or CRI with the cloak runtime handler) so the guest pulls it: %w",
				key, TargetRefLabel, errdefs.ErrFailedPrecondition)
		}
		return s.Snapshotter.Prepare(ctx, key, parent, opts...)
	}
	if _, err := s.Snapshotter.Stat(ctx, target); err == nil {
		return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	} else if !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("stat target snapshot %q: %w", target, err)
	}
	if _, err := s.Snapshotter.Prepare(ctx, key, parent, opts...); err != nil {
		return nil, err
	}
	// The labels (the target reference among them) go to the committed
	// snapshot: containerd's metadata store finds it by that label.
	if err := s.Snapshotter.Commit(ctx, target, key, opts...); err != nil {
		if rerr := s.Snapshotter.Remove(ctx, key); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("key", key).Warn("remove the active snapshot of a failed guest-pull commit")
		}
		if errdefs.IsAlreadyExists(err) {
			// Another pull of the same layer committed it first.
			return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("commit guest-pull snapshot %q: %w", target, err)
	}
	log.G(ctx).WithFields(log.Fields{"target": target, "parent": parent}).Debug("layer left to the guest")
	return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
}

// isExtractKey reports whether key is one containerd uses to unpack a layer
// ("extract-<unique> <chain ID>"), as the client or, behind containerd's
// metadata store, as "<namespace>/<id>/extract-...".
func isExtractKey(key string) bool {
	prefix := snapshots.UnpackKeyPrefix + "-"
	if strings.HasPrefix(key, prefix) {
		return true
	}
	parts := strings.SplitN(key, "/", 3)
	return len(parts) == 3 && strings.HasPrefix(parts[2], prefix)
}

// Close closes the backend and releases the root.
func (s *Snapshotter) Close() error {
	err := s.Snapshotter.Close()
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	return err
}
