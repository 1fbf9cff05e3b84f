package snapshotter

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	chainA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	chainB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func newSnapshotter(t *testing.T) (*Snapshotter, string) {
	t.Helper()
	root := t.TempDir()
	sn, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn, root
}

// layerOpt is what containerd's unpacker gives the Prepare of a layer.
func layerOpt(chainID string) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{TargetRefLabel: chainID, "containerd.io/snapshot/cri.layer-digest": "sha256:layer"})
}

// snapshotDirs lists the snapshot directories of root and fails on any
// file: nothing is ever unpacked here.
func snapshotDirs(t *testing.T, root string) []string {
	t.Helper()
	base := filepath.Join(root, "snapshots")
	var dirs []string
	err := filepath.WalkDir(base, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			t.Errorf("file %s in the snapshotter root", path)
		} else if filepath.Dir(path) == base {
			dirs = append(dirs, d.Name())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

func TestLayersAreLeftToTheGuest(t *testing.T) {
	ctx := context.Background()
	sn, root := newSnapshotter(t)

	_, err := sn.Prepare(ctx, "extract-1 "+chainA, "", layerOpt(chainA))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of the first layer: %v, want already exists (skip the layer)", err)
	}
	_, err = sn.Prepare(ctx, "extract-2 "+chainB, chainA, layerOpt(chainB))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of the second layer: %v, want already exists", err)
	}
	// A second pull of the same image.
	if _, err := sn.Prepare(ctx, "extract-3 "+chainB, chainA, layerOpt(chainB)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a layer already there: %v, want already exists", err)
	}
	for _, c := range []struct{ name, parent string }{{chainA, ""}, {chainB, chainA}} {
		info, err := sn.Stat(ctx, c.name)
		if err != nil {
			t.Fatalf("Stat %s: %v", c.name, err)
		}
		if info.Kind != snapshots.KindCommitted || info.Parent != c.parent || info.Labels[TargetRefLabel] != c.name {
			t.Errorf("Stat %s: kind %v parent %q labels %v; want committed, parent %q and the target label (containerd's metadata store looks it up by that)",
				c.name, info.Kind, info.Parent, info.Labels, c.parent)
		}
	}
	var active int
	if err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Kind == snapshots.KindActive {
			active++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if active != 0 {
		t.Errorf("%d active snapshots left by the layer Prepares", active)
	}

	// The container's rootfs on top of the chain: a real, empty mount.
	mounts, err := sn.Prepare(ctx, "container", chainB)
	if err != nil {
		t.Fatalf("Prepare of the container rootfs: %v", err)
	}
	if len(mounts) != 1 || mounts[0].Type != "bind" {
		t.Fatalf("container mounts %+v, want one bind mount", mounts)
	}
	entries, err := os.ReadDir(mounts[0].Source)
	if err != nil || len(entries) != 0 {
		t.Errorf("container rootfs %s: %d entries (err %v), want an empty directory", mounts[0].Source, len(entries), err)
	}
	if got := len(snapshotDirs(t, root)); got != 3 {
		t.Errorf("%d snapshot dirs, want 3 (two layers, one container)", got)
	}
	for _, key := range []string{"container", chainB, chainA} {
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatalf("Remove %s: %v", key, err)
		}
	}
	if dirs := snapshotDirs(t, root); len(dirs) != 0 {
		t.Errorf("snapshot dirs %v left after removing every snapshot", dirs)
	}
}

func TestPrepareRefusals(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name, key, parent string
		opts              []snapshots.Opt
		is                func(error) bool
		msg               string
	}{
		{name: "layer on a missing parent", key: "extract-1 " + chainB, parent: chainA, opts: []snapshots.Opt{layerOpt(chainB)}, is: errdefs.IsNotFound},
		{name: "host unpack without a target", key: "extract-1 " + chainA, is: errdefs.IsFailedPrecondition, msg: "does not unpack layers on the host"},
		{name: "host unpack behind containerd's metadata store", key: "default/7/extract-1 " + chainA, is: errdefs.IsFailedPrecondition, msg: "pull the image with this snapshotter"},
		{name: "container on a missing image", key: "container", parent: chainA, is: errdefs.IsNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sn, root := newSnapshotter(t)
			_, err := sn.Prepare(ctx, tt.key, tt.parent, tt.opts...)
			if err == nil || !tt.is(err) {
				t.Fatalf("Prepare: %v, want a %s error", err, tt.name)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not say %q", err, tt.msg)
			}
			if dirs := snapshotDirs(t, root); len(dirs) != 0 {
				t.Errorf("snapshot dirs %v left by a refused Prepare", dirs)
			}
		})
	}
}

func TestNewRefusals(t *testing.T) {
	if _, err := New(""); err == nil || !strings.Contains(err.Error(), "root is empty") {
		t.Errorf("New(\"\"): %v, want an empty root error", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(file); err == nil {
		t.Error("New on a regular file: no error")
	}

	sn, root := newSnapshotter(t)
	if _, err := New(root); err == nil || !strings.Contains(err.Error(), "in use by another cloak-snapshotter") {
		t.Errorf("second New on one root: %v, want in use", err)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := New(root)
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	again.Close()
}

func TestListenRefusals(t *testing.T) {
	dir := t.TempDir()
	if _, err := Listen(""); err == nil {
		t.Error("Listen(\"\"): no error")
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a regular file: %v, want not a socket", err)
	}
	live := filepath.Join(dir, "live.sock")
	l, err := Listen(live)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Listen(live); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Listen on a served socket: %v, want in use", err)
	}
	// A socket whose server died without removing it is replaced.
	stale := filepath.Join(dir, "stale.sock")
	sl, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()
	l2, err := Listen(stale)
	if err != nil {
		t.Fatalf("Listen on a stale socket: %v", err)
	}
	l2.Close()
}

// TestServe drives the snapshotter over gRPC with containerd's own proxy
// client, as containerd's proxy plugin does.
func TestServe(t *testing.T) {
	sn, _ := newSnapshotter(t)
	address := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(address)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, l, sn) }()
	defer cancel()

	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "cloak")
	if _, err := client.Prepare(ctx, "extract-1 "+chainA, "", layerOpt(chainA)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a layer over gRPC: %v, want already exists", err)
	}
	if info, err := client.Stat(ctx, chainA); err != nil || info.Kind != snapshots.KindCommitted {
		t.Errorf("Stat over gRPC: %+v, %v; want a committed snapshot", info, err)
	}
	if _, err := client.Prepare(ctx, "extract-2 "+chainB, chainA); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "does not unpack layers") {
		t.Errorf("host unpack over gRPC: %v, want failed precondition with the reason", err)
	}
	if mounts, err := client.Prepare(ctx, "container", chainA); err != nil || len(mounts) != 1 {
		t.Errorf("container Prepare over gRPC: %v, %v", mounts, err)
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := os.Lstat(address); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after Serve returned (lstat: %v)", err)
	}
}
