package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
)

// Defaults of VTPM.
const (
	DefaultSwtpm      = "swtpm"
	DefaultSwtpmSetup = "swtpm_setup"
)

// QOM ids of the vTPM.
const (
	idTPMChardev = "chrtpm"
	idTPM        = "tpm0"
)

// VTPM attaches a software TPM 2.0 (swtpm) to the guest as a CRB device,
// /dev/tpmrm0 in the guest. swtpm runs on the host, so it proves nothing
// against the host: it is for CI and for guests without a TEE.
type VTPM struct {
	// StateDir holds the TPM's persistent state (its endorsement seed, so
	// its EK and AK). Empty: no TPM. Start manufactures a state there with
	// swtpm_setup when it has none: an RSA EK whose certificate, signed by
	// the local CA SetupConfig names, is stored in NV.
	StateDir string
	// SetupConfig is swtpm_setup's --config ("" = /etc/swtpm_setup.conf,
	// the system's swtpm-localca).
	SetupConfig string
	// Swtpm and SwtpmSetup are the binaries (default: looked up in PATH).
	Swtpm      string
	SwtpmSetup string
}

// SwtpmSocket is swtpm's control socket, which QEMU's emulator backend
// connects to.
func (c Config) SwtpmSocket() string { return filepath.Join(c.RunDir, "swtpm.sock") }

// SwtpmLog receives swtpm's own log.
func (c Config) SwtpmLog() string { return filepath.Join(c.RunDir, "swtpm.log") }

func (c Config) validateTPM() error {
	if c.TPM.StateDir == "" {
		return nil
	}
	if !filepath.IsAbs(c.TPM.StateDir) {
		return fmt.Errorf("vTPM state dir %q is relative: use an absolute path", c.TPM.StateDir)
	}
	if c.TEE.Kind != TEENone {
		return fmt.Errorf("a vTPM (swtpm) with tee %q: the host runs swtpm, so a confidential guest cannot trust it", c.TEE.Kind)
	}
	if c.Machine != MachineQ35 {
		return fmt.Errorf("a vTPM needs machine %q (its CRB interface is described by ACPI), not %q", MachineQ35, c.Machine)
	}
	return nil
}

// tpmArgs adds the TPM CRB device backed by swtpm.
func tpmArgs(cfg Config) []string {
	if cfg.TPM.StateDir == "" {
		return nil
	}
	return []string{
		"-chardev", "socket,id=" + idTPMChardev + ",path=" + escape(cfg.SwtpmSocket()),
		"-tpmdev", "emulator,id=" + idTPM + ",chardev=" + idTPMChardev,
		"-device", "tpm-crb,tpmdev=" + idTPM,
	}
}

// swtpmArgs are swtpm's options: TPM 2.0, control channel on a unix socket
// (QEMU passes the data channel through it), ending when QEMU disconnects.
func swtpmArgs(cfg Config) []string {
	return []string{
		"socket", "--tpm2",
		"--tpmstate", "dir=" + escape(cfg.TPM.StateDir) + ",mode=0600",
		"--ctrl", "type=unixio,path=" + escape(cfg.SwtpmSocket()),
		"--log", "file=" + escape(cfg.SwtpmLog()) + ",level=1",
		"--terminate",
	}
}

// startSwtpm manufactures the TPM state if needed, runs swtpm for cfg and
// waits until its control socket exists.
func startSwtpm(ctx context.Context, cfg Config, logger *slog.Logger) (*daemon, error) {
	swtpm, setup := cfg.TPM.Swtpm, cfg.TPM.SwtpmSetup
	if swtpm == "" {
		swtpm = DefaultSwtpm
	}
	if setup == "" {
		setup = DefaultSwtpmSetup
	}
	bin, err := exec.LookPath(swtpm)
	if err != nil {
		return nil, fmt.Errorf("find swtpm: %w (install the swtpm and swtpm-tools packages, or drop the vTPM)", err)
	}
	if err := manufactureTPM(ctx, cfg, setup); err != nil {
		return nil, err
	}
	return startDaemon(ctx, "swtpm", exec.Command(bin, swtpmArgs(cfg)...), cfg.SwtpmSocket(), cfg.SwtpmLog(), logger,
		"state_dir", cfg.TPM.StateDir)
}

// manufactureTPM runs swtpm_setup when StateDir holds no TPM 2.0 state yet.
func manufactureTPM(ctx context.Context, cfg Config, setup string) error {
	if _, err := os.Stat(filepath.Join(cfg.TPM.StateDir, "tpm2-00.permall")); err == nil {
		return nil
	}
	if err := os.MkdirAll(cfg.TPM.StateDir, 0o700); err != nil {
		return fmt.Errorf("vTPM state dir: %w", err)
	}
	args := []string{"--tpm2", "--tpmstate", cfg.TPM.StateDir,
		"--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--pcr-banks", "sha256", "--not-overwrite"}
	if cfg.TPM.SetupConfig != "" {
		args = append(args, "--config", cfg.TPM.SetupConfig)
	}
	out, err := exec.CommandContext(ctx, setup, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("manufacture the vTPM (%s %v): %w\n%s", setup, args, err, out)
	}
	return nil
}
