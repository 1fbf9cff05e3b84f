// Package transport gives the agent its listener for the host channel: a
// vsock port on hosts with vhost-vsock, else the virtio-serial port named
// agentapi.AgentPortName.
package transport

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// probeTimeout bounds the wait for a channel device: virtio-console learns
// port names from the host through control messages after probing, so the
// name can appear a little after PID 1 starts.
const probeTimeout = 5 * time.Second

const probeInterval = 20 * time.Millisecond

// roots locate /sys and /dev; tests point them at a fake tree.
type roots struct{ sys, dev string }

// Listen returns the agent's listener. A virtio-serial port named
// agentapi.AgentPortName wins when present: the host adds it only when it
// chose that channel, whereas /dev/vsock exists whenever the vsock modules
// are loaded, even without a vhost-vsock device behind them. Otherwise
// vsock port agentapi.VsockPort is used once the guest has a context ID.
func Listen(ctx context.Context, log *slog.Logger) (net.Listener, error) {
	return listen(ctx, log, roots{sys: "/sys", dev: "/dev"}, vsockContextID)
}

func listen(ctx context.Context, log *slog.Logger, r roots, cid func() (uint32, error)) (net.Listener, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	for {
		dev, err := FindPort(r.sys, r.dev, agentapi.AgentPortName)
		if err == nil {
			l, err := listenSerial(dev)
			if err != nil {
				return nil, err
			}
			log.Info("agent channel: virtio-serial", "port", agentapi.AgentPortName, "device", dev)
			return l, nil
		}
		if id, err := cid(); err == nil {
			l, err := vsock.Listen(agentapi.VsockPort, nil)
			if err != nil {
				return nil, fmt.Errorf("listen on vsock port %d: %w", agentapi.VsockPort, err)
			}
			log.Info("agent channel: vsock", "cid", id, "port", agentapi.VsockPort)
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no agent channel after %s: no virtio-serial port named %s in %s/class/virtio-ports and no vsock transport; the VM needs one of them",
				probeTimeout, agentapi.AgentPortName, r.sys)
		case <-time.After(probeInterval):
		}
	}
}

// vsockContextID returns the guest's vsock context ID when a guest
// transport (virtio-vsock) is bound; without one the kernel reports
// VMADDR_CID_ANY, and the hypervisor/local/host IDs are not a guest's.
func vsockContextID() (uint32, error) {
	id, err := vsock.ContextID()
	if err != nil {
		return 0, err
	}
	if id <= vsock.Host || id == ^uint32(0) {
		return 0, fmt.Errorf("no vsock guest transport (context ID %#x)", id)
	}
	return id, nil
}

// FindPort returns the device of the virtio-serial port called name: the
// /dev/virtio-ports/NAME link when something created it, else the
// /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name matches (there
// is no udev in the guest).
func FindPort(sysRoot, devRoot, name string) (string, error) {
	link := filepath.Join(devRoot, "virtio-ports", name)
	if _, err := os.Stat(link); err == nil {
		return link, nil
	}
	entries, err := os.ReadDir(filepath.Join(sysRoot, "class", "virtio-ports"))
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysRoot, "class", "virtio-ports", e.Name(), "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := filepath.Join(devRoot, e.Name())
		if _, err := os.Stat(dev); err != nil {
			return "", err
		}
		return dev, nil
	}
	return "", fmt.Errorf("no virtio-serial port named %s", name)
}
