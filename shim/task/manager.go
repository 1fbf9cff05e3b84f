package task

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// RuntimeName is the containerd runtime type of the cloak shim.
const RuntimeName = "io.containerd.cloak.v2"

// Manager starts and cleans up shim processes for containerd.
type Manager struct{}

// NewManager returns the shim manager for the cloak runtime.
func NewManager() shim.Manager { return Manager{} }

// Name is the runtime type.
func (Manager) Name() string { return RuntimeName }

// Start runs `containerd-shim-cloak-v2 start`: it starts the long-lived
// shim process serving the task API on a fresh socket and returns how to
// reach it. One shim and one VM per pod: a CRI container names its pod's
// sandbox, whose shim is already serving, and that shim's address is
// returned; a task outside a pod gets a shim of its own.
func (Manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ shim.BootstrapParams, retErr error) {
	params := shim.BootstrapParams{Version: 3, Protocol: "ttrpc"}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return params, err
	}
	bundle, err := os.Getwd()
	if err != nil {
		return params, err
	}
	annotations, err := readAnnotations(bundle)
	if err != nil {
		return params, err
	}
	address, err := shim.SocketAddress(ctx, opts.Address, groupID(id, annotations), false)
	if err != nil {
		return params, err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return params, fmt.Errorf("create shim socket: %w", err)
		}
		if shim.CanConnect(address) {
			params.Address = address
			return params, nil
		}
		// Left by a shim that died: no one serves it.
		if err := shim.RemoveSocket(address); err != nil {
			return params, fmt.Errorf("remove stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return params, fmt.Errorf("create shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			_ = shim.RemoveSocket(address)
		}
	}()
	f, err := socket.File()
	if err != nil {
		return params, err
	}
	defer f.Close()

	self, err := os.Executable()
	if err != nil {
		return params, err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = bundle
	cmd.Env = os.Environ()
	// The shim library serves on fd 3.
	cmd.ExtraFiles = []*os.File{f}
	// Its own process group: it must outlive `start` and containerd's
	// signals to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return params, fmt.Errorf("start shim: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	// No negative OOM score: these hosts lack CAP_SYS_RESOURCE, and the
	// shim must not be harder to kill than its VM (shim.AdjustOOMScore
	// only ever raises it to containerd's own score).
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		log.G(ctx).WithError(err).Warn("adjust shim OOM score")
	}
	params.Address = address
	return params, nil
}

// Stop runs `containerd-shim-cloak-v2 delete`, after the shim died or when
// containerd cleans up: it removes the task's VM (QEMU, run directory)
// recorded in the bundle, and the shim's socket.
func (Manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	bundle, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	if filepath.Base(bundle) != id {
		return shim.StopStatus{}, fmt.Errorf("cleanup of %s: working directory %s is not its bundle: %w", id, bundle, errdefs.ErrInvalidArgument)
	}
	if err := cleanupVM(bundle); err != nil {
		return shim.StopStatus{}, fmt.Errorf("cleanup of %s: %w", id, err)
	}
	// A shim that exits normally removes its socket; a killed one cannot.
	// containerd recorded the address in the bundle.
	if raw, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json")); err == nil {
		var params shim.BootstrapParams
		if err := json.Unmarshal(raw, &params); err == nil && params.Address != "" && !shim.CanConnect(params.Address) {
			if err := shim.RemoveSocket(params.Address); err != nil {
				log.G(ctx).WithError(err).Warn("remove socket of the dead shim")
			}
		}
	}
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: int(vmGoneStatus)}, nil
}

// Info describes the runtime to containerd.
func (m Manager) Info(ctx context.Context, _ io.Reader) (*types.RuntimeInfo, error) {
	return &types.RuntimeInfo{Name: m.Name(), Version: &types.RuntimeVersion{Version: "v0"}}, nil
}
