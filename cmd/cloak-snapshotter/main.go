// Command cloak-snapshotter serves Cloak's guest-pull snapshotter to
// containerd as a proxy plugin (see docs/snapshotter.md).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"
	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/shim/snapshotter"
)

type options struct {
	address, root, logLevel string
}

func main() {
	if err := newCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:   "cloak-snapshotter [flags]",
		Short: "Guest-pull snapshotter for containerd: image pulls for the cloak runtime skip host download and unpack",
		Example: `  # Defaults: socket /run/cloak/snapshotter.sock, storage /var/lib/cloak/snapshotter
  cloak-snapshotter

  # containerd's config.toml then names the socket:
  #   [proxy_plugins.cloak]
  #     type = "snapshot"
  #     address = "/run/cloak/snapshotter.sock"
  # and pulls use it:
  ctr image pull --snapshotter cloak registry.example/app:1.0

  # Another socket and root, with debug logs
  cloak-snapshotter --address /run/cloak/snap-test.sock --root /tmp/cloak-snap --log-level debug`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := run(cmd.Context(), o)
			if err != nil {
				fmt.Fprintln(os.Stderr, "cloak-snapshotter:", err)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.address, "address", "/run/cloak/snapshotter.sock", "unix socket containerd's proxy plugin connects to")
	f.StringVar(&o.root, "root", "/var/lib/cloak/snapshotter", "directory holding the snapshots (empty directories) and their database")
	f.StringVar(&o.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	return cmd
}

func run(ctx context.Context, o options) error {
	if err := log.SetLevel(o.logLevel); err != nil {
		return fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", o.logLevel)
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	sn, err := snapshotter.New(o.root)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	defer sn.Close()
	l, err := snapshotter.Listen(o.address)
	if err != nil {
		return fmt.Errorf("--address: %w", err)
	}
	if err := snapshotter.Serve(ctx, l, sn); err != nil {
		return err
	}
	log.G(ctx).Info("stopped")
	return nil
}
