// Command cloak-image builds Cloak's guest image (kernel, initrd, manifest)
// reproducibly and recomputes an image's launch measurement so anyone can
// check a published manifest.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/guest-image/build"
	"github.com/cloak-containers/cloak/shim/emulatedsnp"
)

// Exit codes: 1 for a failed command, 2 when `measure` finds a mismatch.
const (
	exitError    = 1
	exitMismatch = 2
)

// errMismatch marks a verification that ran and found differences.
var errMismatch = errors.New("image does not match its manifest")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var output string
	root := &cobra.Command{
		Use:           "cloak-image",
		Short:         "Build Cloak's guest image reproducibly and check its launch measurement",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&output, "output", "text", "output format: text or json")
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(buildCmd(&output, stdout, stderr), measureCmd(&output, stdout), trivialCmd(stderr), emulatedRootCmd(&output, stdout))

	err := root.ExecuteContext(ctx)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errMismatch):
		fmt.Fprintln(stderr, "cloak-image:", err)
		return exitMismatch
	default:
		fmt.Fprintln(stderr, "cloak-image:", err)
		return exitError
	}
}

func buildCmd(output *string, stdout, stderr io.Writer) *cobra.Command {
	var o build.Options
	cmd := &cobra.Command{
		Use:   "build --out DIR",
		Short: "Build vmlinuz, initrd.img and manifest.json into DIR",
		Long: `Build fetches Debian's linux-image-6.12 cloud kernel from bookworm-backports (cached in
$CLOAK_CACHE, default ~/.cache/cloak), builds cloak-agent and cloak-aa from this checkout and a
static runc from its Go module (cached), and writes a reproducible initrd: the same inputs give
byte-identical files. Progress goes to stderr, the summary to stdout.`,
		Example: `  # from the checkout, newest kernel in bookworm-backports
  cloak-image build --out out/image

  # pin the kernel and use prebuilt static binaries
  cloak-image build --out out/image --kernel-version 6.12.95-1~bpo12+1 \
      --agent bin/cloak-agent --aa bin/cloak-aa --runc /usr/local/bin/runc --output json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.OutDir == "" {
				return errors.New("--out is required")
			}
			o.Progress = stderr
			m, err := build.Build(cmd.Context(), o)
			if err != nil {
				return err
			}
			if *output == "json" {
				return writeJSON(stdout, m)
			}
			fmt.Fprintf(stdout, "image in %s\n", o.OutDir)
			fmt.Fprintf(stdout, "  kernel    %s (%s), %s\n", m.KernelPackage.Name, m.KernelPackage.Version, mib(m.Kernel.Size))
			fmt.Fprintf(stdout, "  initrd    %s zstd, %d modules, runc %s\n", mib(m.Initrd.Size), len(m.Modules), m.RuncVersion)
			fmt.Fprintf(stdout, "  cmdline   %s\n", m.Cmdline)
			fmt.Fprintf(stdout, "  emulated launch measurement %s\n", m.Measurements.Emulated)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.OutDir, "out", "", "output directory (created if missing)")
	f.StringVar(&o.KernelVersion, "kernel-version", "", "exact Debian package version of the kernel (default: newest in bookworm-backports)")
	f.StringVar(&o.Agent, "agent", "", "prebuilt static cloak-agent (default: build ./cmd/cloak-agent)")
	f.StringVar(&o.AA, "aa", "", "prebuilt static cloak-aa (default: build ./cmd/cloak-aa)")
	f.StringVar(&o.Runc, "runc", "", "prebuilt static runc (default: build runc "+build.DefaultRuncVersion+" from its Go module, cached)")
	f.StringVar(&o.CABundle, "ca-bundle", build.HostCABundle, "PEM CA bundle for the guest (pin it to build the same image on another machine)")
	f.StringVar(&o.CacheDir, "cache", "", "cache directory (default: $CLOAK_CACHE or ~/.cache/cloak)")
	return cmd
}

func measureCmd(output *string, stdout io.Writer) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "measure --dir DIR",
		Short: "Recompute an image's digests and emulated launch measurement and compare them with its manifest",
		Long: `Measure hashes DIR/vmlinuz and DIR/initrd.img, recomputes the emulated launch measurement
from them and the manifest's kernel command line (encoding: measurements/README.md), and compares
everything with DIR/manifest.json. Exit status 2 means a mismatch: a file was changed or the
manifest does not describe these files.`,
		Example: `  cloak-image measure --dir out/image
  cloak-image measure --dir out/image --output json | jq -r .emulated`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("--dir is required")
			}
			v, err := build.VerifyDir(dir)
			if err != nil {
				return err
			}
			if *output == "json" {
				err = writeJSON(stdout, struct {
					Emulated   string   `json:"emulated"`
					Match      bool     `json:"match"`
					Mismatches []string `json:"mismatches,omitempty"`
				}{v.Emulated, len(v.Mismatches) == 0, v.Mismatches})
			} else {
				fmt.Fprintf(stdout, "emulated launch measurement %s\n", v.Emulated)
				for _, m := range v.Mismatches {
					fmt.Fprintf(stdout, "MISMATCH %s\n", m)
				}
				if len(v.Mismatches) == 0 {
					fmt.Fprintln(stdout, "matches manifest.json")
				}
			}
			if err != nil {
				return err
			}
			if len(v.Mismatches) > 0 {
				return fmt.Errorf("%w: %s", errMismatch, strings.Join(v.Mismatches, "; "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "image directory holding vmlinuz, initrd.img and manifest.json")
	return cmd
}

func emulatedRootCmd(output *string, stdout io.Writer) *cobra.Command {
	dir := emulatedsnp.DefaultDir
	cmd := &cobra.Command{
		Use:   "emulated-root [--dir DIR]",
		Short: "Print the emulated SEV-SNP root (ASK then ARK, PEM) a KBS trusts with --snp-extra-root",
		Long: `Emulated-root prints the test-only certificate chain of this machine's emulated SEV-SNP
platform (the shim's tee = "emulated"), creating it in DIR first if there is none (the shim
creates the same chain on first use; see shim/README.md). Give the output to a KBS as
--snp-extra-root: evidence chained to it is verified like AMD's and marked emulated.
It is a test root: never give it to a KBS that guards production secrets.`,
		Example: `  cloak-image emulated-root > emulated-snp.pem
  kbs --data-dir /var/lib/kbs --snp-extra-root emulated-snp.pem --snp-crl if-available
  cloak-image emulated-root --dir /var/lib/cloak/emulated-snp --output json | jq -r .chip_id`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := emulatedsnp.LoadOrCreate(dir)
			if err != nil {
				return err
			}
			if *output == "json" {
				chip := root.ChipID()
				return writeJSON(stdout, struct {
					Dir       string `json:"dir"`
					ChainPEM  string `json:"cert_chain_pem"`
					ChipID    string `json:"chip_id"`
					ARKExpiry string `json:"ark_not_after"`
				}{dir, string(root.RootPEM()), hex.EncodeToString(chip[:]), root.ARK.NotAfter.UTC().Format(time.RFC3339)})
			}
			_, err = stdout.Write(root.RootPEM())
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "dir", dir, "directory of the emulated chain (the shim's emulated_snp_dir)")
	return cmd
}

func trivialCmd(stderr io.Writer) *cobra.Command {
	var initPath, out string
	cmd := &cobra.Command{
		Use:     "build-trivial --init FILE --out FILE",
		Short:   "Write an initrd holding only a static /init (the boot benchmark's floor)",
		Example: `  cloak-image build-trivial --init bin/hello-init --out out/trivial.img`,
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if initPath == "" || out == "" {
				return errors.New("--init and --out are required")
			}
			b, err := os.ReadFile(initPath)
			if err != nil {
				return err
			}
			img, err := build.TrivialInitrd(b)
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, img, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "wrote %s (%s)\n", out, mib(int64(len(img))))
			return nil
		},
	}
	cmd.Flags().StringVar(&initPath, "init", "", "static x86-64 executable to run as /init")
	cmd.Flags().StringVar(&out, "out", "", "output initrd file")
	return cmd
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
