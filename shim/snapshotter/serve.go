package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
	"google.golang.org/grpc"
)

// stopGrace bounds how long Serve waits for calls in flight at shutdown.
const stopGrace = 10 * time.Second

// Listen opens the unix socket containerd's proxy plugin connects to. A
// socket left by a snapshotter that died is replaced; one that still
// answers, or a path that is not a socket, is an error.
func Listen(address string) (net.Listener, error) {
	if address == "" {
		return nil, errors.New("socket address is empty: give a path such as /run/cloak/snapshotter.sock")
	}
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return nil, fmt.Errorf("create the socket's directory: %w", err)
	}
	if fi, err := os.Lstat(address); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket: remove it or choose another address", address)
		}
		conn, err := net.DialTimeout("unix", address, time.Second)
		if err == nil {
			conn.Close()
			return nil, fmt.Errorf("%s is in use by another process: stop it or choose another address", address)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("check the existing socket %s: %w", address, err)
		}
		if err := os.Remove(address); err != nil {
			return nil, fmt.Errorf("remove the stale socket %s: %w", address, err)
		}
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", address, err)
	}
	if err := os.Chmod(address, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict the socket to its owner: %w", err)
	}
	return l, nil
}

// Serve serves containerd's snapshots gRPC API for sn on l until ctx ends,
// then stops (calls in flight get stopGrace to finish) and closes l, which
// removes a unix socket.
func Serve(ctx context.Context, l net.Listener, sn snapshots.Snapshotter) error {
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	log.G(ctx).WithField("address", l.Addr().String()).Info("serving the snapshots API")
	select {
	case err := <-errc:
		return fmt.Errorf("serve the snapshots API: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		log.G(ctx).Warn("calls still running after the grace period: stopping them")
		srv.Stop()
	}
	<-errc
	return nil
}
