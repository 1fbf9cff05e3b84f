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
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	emulatedsnp "github.com/cloak-containers/cloak/emulated/snp"
	"github.com/cloak-containers/cloak/guest-image/build"
	"github.com/cloak-containers/cloak/guest-image/build/kernel"
	"github.com/cloak-containers/cloak/internal/cmdline"
	"github.com/cloak-containers/cloak/measurements/bundle"
	"github.com/cloak-containers/cloak/measurements/launch"
	"github.com/cloak-containers/cloak/measurements/snp"
)

// Exit codes: 1 for a failed command or a mistake on the command line, 2
// when `measure` finds a mismatch (so a typo never reads as a mismatch).
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
		Use:   "cloak-image",
		Short: "Build Cloak's guest image reproducibly and check its launch measurement",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	root.AddCommand(buildCmd(&output, stdout, stderr), measureCmd(&output, stdout), signCmd(&output, stdout), trivialCmd(stderr), emulatedRootCmd(&output, stdout), sbomCmd(stdout))

	usage, err := cmdline.Execute(ctx, root, args, stdout, stderr)
	if err == nil {
		return 0
	}
	hint := ""
	if usage {
		hint = cmdline.UsageHint(root)
	}
	cmdline.PrintError(stdout, stderr, cmdline.JSONOutput(root, args), "cloak-image", err, hint)
	switch {
	case usage:
		return exitError
	case errors.Is(err, errMismatch):
		return exitMismatch
	default:
		return exitError
	}
}

func buildCmd(output *string, stdout, stderr io.Writer) *cobra.Command {
	var o build.Options
	cmd := &cobra.Command{
		Use:   "build --out DIR",
		Short: "Build vmlinuz, root.img, debian/ and manifest.json into DIR",
		Long: `Build compiles Cloak's guest kernel from Debian's linux-source-6.12 (once per source version and
config: cached in $CLOAK_CACHE, default ~/.cache/cloak; 6-10 minutes on 2 cores), builds
cloak-agent and cloak-aa from this checkout and a static runc from its Go module (cached), and writes
the read-only root disk root.img (EROFS + dm-verity; its root hash is on the kernel command line).
For handlers that select Debian's kernel (guest_kernel = "debian") it also writes debian/vmlinuz
(linux-image-6.12 cloud from bookworm-backports) and debian/initrd.img with the same binaries. The
same inputs give byte-identical files. Progress goes to stderr, the summary to stdout.`,
		Example: `  # from the checkout, newest kernel in bookworm-backports
  cloak-image build --out out/image

  # record the real SNP and TDX values and sign them for kbsctl reference-value import
  cloak-image build --out out/image --sign-key builder.key \
      --snp-firmware ~/.cache/cloak/ovmf-2026.08+ds-2/OVMF.amdsev.fd \
      --tdx-firmware ~/.cache/cloak/ovmf-2026.08+ds-2/OVMF.inteltdx.fd

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
			fmt.Fprintf(stdout, "  kernel    Cloak's, %s %s, config %.12s, %s\n", m.KernelBuild.SourcePackage, m.KernelBuild.SourceVersion, m.KernelBuild.FragmentSHA256, mib(m.Kernel.Size))
			fmt.Fprintf(stdout, "  root      %s erofs + dm-verity, root hash %s, runc %s\n", mib(m.Root.Size), m.Root.RootHash, m.RuncVersion)
			fmt.Fprintf(stdout, "  cmdline   %s\n", m.Cmdline)
			fmt.Fprintf(stdout, "  debian/   %s (%s) %s, initrd %s zstd with %d modules\n", m.Debian.KernelPackage.Name, m.Debian.KernelPackage.Version,
				mib(m.Debian.Kernel.Size), mib(m.Debian.Initrd.Size), len(m.Debian.Modules))
			fmt.Fprintf(stdout, "  emulated launch measurement %s\n", m.Measurements.Emulated)
			if sm := m.Measurements.SNP; sm != nil {
				fmt.Fprintf(stdout, "  snp       %d measurements (%s, sha256 %.16s...)\n", len(sm.Values), sm.Firmware.File, sm.Firmware.SHA256)
			}
			if t := m.Measurements.TDX; t != nil {
				fmt.Fprintf(stdout, "  tdx       mr_td %.16s... (%s)\n", t.MRTD, t.Firmware.File)
			}
			if o.SignKey != "" {
				fmt.Fprintf(stdout, "  signed reference values in %s\n", filepath.Join(o.OutDir, build.BundleFile))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.OutDir, "out", "", "output directory (created if missing)")
	f.StringVar(&o.KernelVersion, "kernel-version", "", "exact Debian package version of debian/vmlinuz (default: newest in bookworm-backports)")
	f.StringVar(&o.KernelSourceVersion, "kernel-source-version", "", "linux-source-6.12 version Cloak's kernel is compiled from (default "+kernel.DefaultSourceVersion+")")
	f.StringVar(&o.Agent, "agent", "", "prebuilt static cloak-agent (default: build ./cmd/cloak-agent)")
	f.StringVar(&o.AA, "aa", "", "prebuilt static cloak-aa (default: build ./cmd/cloak-aa)")
	f.StringVar(&o.Runc, "runc", "", "prebuilt static runc (default: build runc "+build.DefaultRuncVersion+" from its Go module, cached)")
	f.StringVar(&o.CABundle, "ca-bundle", build.HostCABundle, "PEM CA bundle for the guest (pin it to build the same image on another machine)")
	f.StringVar(&o.CacheDir, "cache", "", "cache directory (default: $CLOAK_CACHE or ~/.cache/cloak)")
	f.StringVar(&o.SNPFirmware, "snp-firmware", "", "OVMF AMDSEV image: record the SEV-SNP measurement of every CPU model and vCPU count in the manifest")
	f.IntVar(&o.SNPMaxVCPUs, "snp-max-vcpus", build.DefaultSNPMaxVCPUs, "largest vCPU count to record SNP measurements for")
	f.StringVar(&o.TDXFirmware, "tdx-firmware", "", "OVMF IntelTdx image: record MRTD, RTMR1 and RTMR2 in the manifest")
	f.StringVar(&o.SignKey, "sign-key", "", "PEM private key (Ed25519, ECDSA P-256/P-384; kbsctl keygen makes one): also write the signed "+build.BundleFile)
	return cmd
}

func measureCmd(output *string, stdout io.Writer) *cobra.Command {
	var (
		dir                   string
		c                     launch.Config
		memory, features, sig string
	)
	cmd := &cobra.Command{
		Use:   "measure --dir DIR | --tee snp|tdx --firmware FW --kernel K [flags]",
		Short: "Compute a guest's SEV-SNP or TDX launch values, or check an image against its manifest",
		Long: `With --tee, measure computes the reference values a KBS compares a real guest's evidence with,
for QEMU booting --kernel (and --initrd, --cmdline) directly from --firmware:

  snp: snp_launch_measurement, for an OVMF AMDSEV build (OVMF.amdsev.fd) with kernel-hashes=on;
       it depends on --vcpus (the vCPUs at launch), --cpu-type (or, for -cpu host, the host's
       --cpu-signature) and --guest-features.
  tdx: tdx_mr_td, tdx_rtmr1, tdx_rtmr2, for an OVMF IntelTdx build (OVMF.inteltdx.fd). RTMR0 is
       not computed (it covers QEMU's ACPI tables; docs/attestation.md says why).

Without --initrd or --cmdline the values are those of QEMU without -initrd or -append. The
firmware is what "make vm-deps" caches in ~/.cache/cloak/ovmf-<version>/.

With --dir, measure hashes DIR/vmlinuz, DIR/root.img (every block against its dm-verity root hash)
and DIR/debian/, recomputes the emulated launch measurements from them and the manifest's kernel
command lines (encoding: measurements/README.md), checks that the command line mounts this root
disk, and compares everything with DIR/manifest.json. Exit status 2 means a mismatch: a file was
changed or the manifest does not describe these files.`,
		Example: `  cloak-image measure --tee snp --firmware ~/.cache/cloak/ovmf-2026.08+ds-2/OVMF.amdsev.fd \
      --kernel out/image/vmlinuz --cmdline "$(jq -r .cmdline out/image/manifest.json)" \
      --vcpus 2 --cpu-type EPYC-Milan
  cloak-image measure --tee tdx --firmware ~/.cache/cloak/ovmf-2026.08+ds-2/OVMF.inteltdx.fd \
      --kernel out/image/vmlinuz --cmdline "$(jq -r .cmdline out/image/manifest.json)" --memory 2G -o json
  cloak-image measure --dir out/image
  cloak-image measure --dir out/image --output json | jq -r .emulated`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.TEE != "" {
				if dir != "" {
					return errors.New("--dir checks an image against its manifest, --tee computes launch values: give one of them")
				}
				return measureLaunch(cmd, c, memory, features, sig, *output, stdout)
			}
			if dir == "" {
				return errors.New("--dir or --tee is required")
			}
			return verifyDir(cmd.Context(), dir, *output, stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "image directory holding vmlinuz, initrd.img and manifest.json")
	f.StringVar(&c.TEE, "tee", "", "compute launch values for this TEE: snp or tdx")
	f.StringVar(&c.Firmware, "firmware", "", "OVMF image QEMU boots (-bios): OVMF.amdsev.fd for snp, OVMF.inteltdx.fd for tdx")
	f.StringVar(&c.Kernel, "kernel", "", "kernel (bzImage) QEMU boots with -kernel")
	f.StringVar(&c.Initrd, "initrd", "", "initrd QEMU loads with -initrd (default: none)")
	f.StringVar(&c.Cmdline, "cmdline", "", "kernel command line QEMU passes with -append (default: none)")
	f.IntVar(&c.VCPUs, "vcpus", 0, "snp: vCPUs QEMU starts the guest with (-smp)")
	f.StringVar(&c.CPUType, "cpu-type", "", "snp: QEMU -cpu model: "+strings.Join(snp.CPUTypes(), ", "))
	f.StringVar(&sig, "cpu-signature", "", "snp: for QEMU -cpu host, the host's CPUID leaf 1 EAX in hex (family/model/stepping of /proc/cpuinfo; e.g. 0xa10f11 for family 25 model 17 stepping 1)")
	f.StringVar(&features, "guest-features", "", "snp: SEV_FEATURES of the VMSA, hex (default 0x1)")
	f.StringVar(&memory, "memory", "", "tdx: guest memory (-m), e.g. 2G")
	f.BoolVar(&c.LegacySetupHeader, "tdx-legacy-setup-header", false, "tdx: measure the kernel with QEMU's setup-header patches (OVMF before 2025.05 or QEMU before 10.0)")
	return cmd
}

func measureLaunch(cmd *cobra.Command, c launch.Config, memory, features, sig, output string, stdout io.Writer) error {
	f := cmd.Flags()
	switch c.TEE {
	case launch.TEESNP:
		for _, n := range []string{"memory", "tdx-legacy-setup-header"} {
			if f.Changed(n) {
				return fmt.Errorf("--%s is a tdx setting; the SNP measurement does not depend on it", n)
			}
		}
		if c.VCPUs == 0 {
			return errors.New("--vcpus is required for snp: one VMSA is measured per vCPU")
		}
		if sig != "" {
			v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(sig), "0x"), 16, 32)
			if err != nil || v == 0 {
				return fmt.Errorf("--cpu-signature %q: want the hex CPUID leaf 1 EAX, such as 0xa10f11", sig)
			}
			c.CPUSignature = uint32(v)
		}
		if (c.CPUType == "") == (c.CPUSignature == 0) {
			return errors.New("give --cpu-type (QEMU -cpu MODEL) or --cpu-signature (QEMU -cpu host: the host's CPUID leaf 1 EAX), not both")
		}
		c.GuestFeatures = snp.DefaultGuestFeatures
		if features != "" {
			v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(features), "0x"), 16, 64)
			if err != nil {
				return fmt.Errorf("--guest-features %q: want a hex number such as 0x1", features)
			}
			c.GuestFeatures = v
		}
	case launch.TEETDX:
		for _, n := range []string{"vcpus", "cpu-type", "cpu-signature", "guest-features"} {
			if f.Changed(n) {
				return fmt.Errorf("--%s is an snp setting; MRTD and the RTMRs do not depend on it", n)
			}
		}
		if memory == "" {
			return errors.New("--memory is required for tdx (QEMU -m, e.g. 2G)")
		}
		m, err := launch.ParseMemory(memory)
		if err != nil {
			return err
		}
		c.Memory = m
	default:
		return fmt.Errorf("--tee %q: want snp or tdx", c.TEE)
	}
	if c.Firmware == "" || c.Kernel == "" {
		return errors.New("--firmware and --kernel are required with --tee")
	}
	r, err := launch.Measure(c)
	if err != nil {
		return err
	}
	if output == "json" {
		return writeJSON(stdout, r)
	}
	for _, v := range r.Values {
		fmt.Fprintf(stdout, "%s %s\n", v.Name, v.Value)
	}
	for _, n := range r.NotComputed {
		fmt.Fprintf(stdout, "# not computed: %s\n", n)
	}
	return nil
}

func verifyDir(ctx context.Context, dir, output string, stdout io.Writer) error {
	v, err := build.VerifyDir(ctx, dir)
	if err != nil {
		return err
	}
	if output == "json" {
		err = writeJSON(stdout, struct {
			Emulated       string   `json:"emulated"`
			DebianEmulated string   `json:"debian_emulated"`
			Match          bool     `json:"match"`
			Mismatches     []string `json:"mismatches,omitempty"`
		}{v.Emulated, v.DebianEmulated, len(v.Mismatches) == 0, v.Mismatches})
	} else {
		fmt.Fprintf(stdout, "emulated launch measurement %s\n", v.Emulated)
		fmt.Fprintf(stdout, "emulated launch measurement (debian/) %s\n", v.DebianEmulated)
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
		err := fmt.Errorf("%w: %s", errMismatch, strings.Join(v.Mismatches, "; "))
		if output == "json" {
			return cmdline.Reported(err) // the JSON above says match: false
		}
		return err
	}
	return nil
}

func signCmd(output *string, stdout io.Writer) *cobra.Command {
	var dir, key, out string
	cmd := &cobra.Command{
		Use:   "sign --dir DIR --sign-key KEY.pem [--out FILE]",
		Short: "Sign the reference values of a built image (what build --sign-key writes)",
		Long: `Sign checks DIR against its manifest.json (as measure --dir does) and writes the signed
reference-value bundle of its values - the emulated measurement and, if the build recorded them,
the SNP and TDX values - to FILE (default DIR/` + build.BundleFile + `), for kbsctl reference-value
import. The key is PEM Ed25519 or ECDSA P-256/P-384 (kbsctl keygen makes one).`,
		Example: `  cloak-image sign --dir out/image --sign-key builder.key
  kbsctl reference-value import --file out/image/` + build.BundleFile,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if dir == "" || key == "" {
				return errors.New("--dir and --sign-key are required")
			}
			signer, err := bundle.LoadSigner(key)
			if err != nil {
				return err
			}
			if out == "" {
				out = filepath.Join(dir, build.BundleFile)
			}
			d, err := build.SignDir(c.Context(), dir, out, signer)
			if err != nil {
				return err
			}
			if *output == "json" {
				return writeJSON(stdout, struct {
					File   string `json:"file"`
					Values int    `json:"values"`
				}{out, len(d.Values)})
			}
			fmt.Fprintf(stdout, "signed %d reference values into %s\n", len(d.Values), out)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "image directory holding vmlinuz, initrd.img and manifest.json")
	cmd.Flags().StringVar(&key, "sign-key", "", "PEM private key")
	cmd.Flags().StringVar(&out, "out", "", "bundle file (default DIR/"+build.BundleFile+")")
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
