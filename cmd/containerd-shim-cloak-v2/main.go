// Command containerd-shim-cloak-v2 is the containerd shim of the
// io.containerd.cloak.v2 runtime: containerd finds it on PATH by that name.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/cloak-containers/cloak/shim/task"
)

func init() {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return task.NewService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
		},
	})
}

func main() {
	// NoReaper: the shim's children are QEMU processes that the qemu
	// package waits for itself; the library's reaper would steal their
	// exit statuses.
	shim.Run(context.Background(), task.NewManager(), func(c *shim.Config) { c.NoReaper = true })
}
