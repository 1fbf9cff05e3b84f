// Command cloak-snapshotter serves Cloak's guest-pull snapshotter to
// containerd as a proxy plugin (see docs/snapshotter.md).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"
	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/internal/cmdline"
	"github.com/cloak-containers/cloak/internal/logging"
	"github.com/cloak-containers/cloak/shim/snapshotter"
)

type options struct {
	address, root string
	logOpts       *logging.Options
}

func main() {
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs the command line args and returns the exit code: 2 for a
// mistake on the command line, 1 for a failure.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage, err := cmdline.Execute(ctx, newCommand(), args, stdout, stderr)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "cloak-snapshotter:", err)
	if usage {
		fmt.Fprintln(stderr, "  run 'cloak-snapshotter --help' for usage")
		return 2
	}
	return 1
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
		Args: cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			return o.logOpts.Check()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.address, "address", "/run/cloak/snapshotter.sock", "unix socket containerd's proxy plugin connects to")
	f.StringVar(&o.root, "root", "/var/lib/cloak/snapshotter", "directory holding the snapshots (empty directories) and their database")
	o.logOpts = logging.Flags(f, logging.Text)
	return cmd
}

func run(ctx context.Context, o options) error {
	// The snapshot service adapter logs through containerd's log package
	// (logrus), so the flags set that logger: the lines look like
	// containerd's own, in either format.
	if err := o.logOpts.Check(); err != nil {
		return err
	}
	if err := log.SetLevel(o.logOpts.Level); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if err := log.SetFormat(log.OutputFormat(o.logOpts.Format)); err != nil {
		return fmt.Errorf("--log-format: %w", err)
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
