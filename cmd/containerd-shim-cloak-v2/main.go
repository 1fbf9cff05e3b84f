// Command containerd-shim-cloak-v2 is the containerd shim of the
// io.containerd.cloak.v2 runtime: containerd finds it on PATH by that name.
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	ctrdversion "github.com/containerd/containerd/v2/version"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/cloak-containers/cloak/internal/version"
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
	// shim.Run parses the flags containerd passes and answers -v with
	// containerd's own version; Cloak's is asked for before it runs.
	if versionRequested(os.Args[1:]) {
		printVersion(os.Stdout)
		return
	}
	// NoReaper: the shim's children are QEMU processes that the qemu
	// package waits for itself; the library's reaper would steal their
	// exit statuses.
	shim.Run(context.Background(), task.NewManager(), func(c *shim.Config) { c.NoReaper = true })
}

// versionRequested reports whether args ask for the version (-v, as for
// every containerd shim, or --version). Flag values (paths, ids) never
// start with "-" in containerd's calls, so a plain scan is exact enough;
// it stops where the flag package would, at "--" or the action (start,
// delete).
func versionRequested(args []string) bool {
	for _, a := range args {
		switch a {
		case "-v", "--v", "-version", "--version":
			return true
		case "--", "start", "delete":
			return false
		}
	}
	return false
}

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "containerd-shim-cloak-v2 version %s (containerd shim library %s)\n", version.String(), ctrdversion.Version)
}
