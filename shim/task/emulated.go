package task

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"

	emulatedsnp "github.com/cloak-containers/cloak/emulated/snp"
	emulatedtdx "github.com/cloak-containers/cloak/emulated/tdx"
	"github.com/cloak-containers/cloak/measurements"
	"github.com/cloak-containers/cloak/measurements/launch"
	"github.com/cloak-containers/cloak/measurements/snp"
	"github.com/cloak-containers/cloak/shim/config"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// emulatedSP is the emulated TEE firmware of one VM (tee = "emulated"): the
// SEV-SNP secure processor or the TDX quoting service, serving the guest's
// report requests on the VM's cloak.sp port.
type emulatedSP struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// spServer is what both emulated platforms do on the port.
type spServer interface {
	Run(ctx context.Context, socket string, logf func(format string, args ...any))
}

// startEmulatedSP measures the boot artifacts qcfg starts (kernel, initrd,
// command line: measurements.EmulatedLaunchDigest), binds the initdata
// digest (SNP HOST_DATA, TDX MRCONFIGID) and serves the VM's SP socket
// until stop, for the platform cfg.EmulatedPlatform names. The artifacts
// are hashed from the files QEMU is given; one swapped between hashing and
// QEMU's read would go unnoticed, which is one reason the evidence is only
// ever "emulated".
func startEmulatedSP(cfg config.Config, qcfg qemu.Config, initdata []byte, logger *slog.Logger) (*emulatedSP, error) {
	measurement, algorithm, err := emulatedMeasurement(cfg, qcfg)
	if err != nil {
		return nil, err
	}
	var srv spServer
	chainDir := cfg.EmulatedSNPDir
	switch cfg.EmulatedPlatform {
	case config.TEETDX:
		chainDir = cfg.EmulatedTDXDir
		root, err := emulatedtdx.LoadOrCreate(chainDir)
		if err != nil {
			return nil, fmt.Errorf("emulated TDX: %w", err)
		}
		var launch emulatedtdx.Launch
		copy(launch.MRTD[:], measurement)
		if launch.MRCONFIGID, err = emulatedtdx.MRConfigIDFor(initdata); err != nil {
			return nil, fmt.Errorf("emulated TDX MRCONFIGID: %w", err)
		}
		srv = emulatedtdx.New(root, launch)
	default:
		root, err := emulatedsnp.LoadOrCreate(chainDir)
		if err != nil {
			return nil, fmt.Errorf("emulated SNP: %w", err)
		}
		hostData, err := emulatedsnp.HostDataFor(initdata)
		if err != nil {
			return nil, fmt.Errorf("emulated SNP HOST_DATA: %w", err)
		}
		launch := emulatedsnp.Launch{HostData: hostData}
		copy(launch.Measurement[:], measurement)
		sp, err := emulatedsnp.New(root, launch)
		if err != nil {
			return nil, err
		}
		srv = sp
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &emulatedSP{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		srv.Run(ctx, qcfg.SPSocket(), func(format string, args ...any) { logger.Warn(fmt.Sprintf(format, args...)) })
	}()
	logger.Info("emulated TEE firmware serving", "platform", cfg.EmulatedPlatform, "socket", qcfg.SPSocket(),
		"measurement", fmt.Sprintf("%x", measurement), "algorithm", algorithm, "chain", chainDir)
	return e, nil
}

// emulatedMeasurement is what the emulated platform reports as the launch
// measurement of qcfg, and how it was computed (for the log): the real SNP
// MEASUREMENT when emulated_snp_firmware is set, else the emulated digest.
func emulatedMeasurement(cfg config.Config, qcfg qemu.Config) (measurement []byte, algorithm string, err error) {
	if cfg.EmulatedPlatform == config.TEESNP && cfg.EmulatedSNPFirmware != "" {
		m, err := emulatedSNPMeasurement(cfg, qcfg)
		return m, "SEV-SNP MEASUREMENT of " + cfg.EmulatedSNPFirmware + ", " + cfg.EmulatedSNPCPUType, err
	}
	kernel, err := fileSHA384(qcfg.Kernel)
	if err != nil {
		return nil, "", fmt.Errorf("emulated %s launch measurement: %w", cfg.EmulatedPlatform, err)
	}
	// No initrd (Cloak's kernel boots the root disk, whose root hash is on
	// the command line) measures as empty, as measurements defines.
	initrd := sha512.Sum384(nil)
	if qcfg.Initrd != "" {
		if initrd, err = fileSHA384(qcfg.Initrd); err != nil {
			return nil, "", fmt.Errorf("emulated %s launch measurement: %w", cfg.EmulatedPlatform, err)
		}
	}
	return measurements.EmulatedLaunchDigestFromHashes(kernel, initrd, sha512.Sum384([]byte(qcfg.Cmdline))), "emulated digest", nil
}

// emulatedSNPMeasurement is the MEASUREMENT a real SEV-SNP host would
// report for qcfg's kernel, initrd, command line and vCPUs with the
// configured OVMF and CPU model: the same code as cloak-image measure and
// the image build's reference values.
func emulatedSNPMeasurement(cfg config.Config, qcfg qemu.Config) ([]byte, error) {
	r, err := launch.Measure(launch.Config{TEE: launch.TEESNP, Firmware: cfg.EmulatedSNPFirmware,
		Kernel: qcfg.Kernel, Initrd: qcfg.Initrd, Cmdline: qcfg.Cmdline, VCPUs: max(qcfg.VCPUs, qemu.DefaultVCPUs),
		CPUType: cfg.EmulatedSNPCPUType, GuestFeatures: snp.DefaultGuestFeatures})
	if err != nil {
		return nil, fmt.Errorf("emulated SEV-SNP MEASUREMENT (emulated_snp_firmware %s): %w", cfg.EmulatedSNPFirmware, err)
	}
	return hex.DecodeString(r.Values[0].Value)
}

// stop ends the SP and waits for it; nil-safe.
func (e *emulatedSP) stop() {
	if e == nil {
		return
	}
	e.cancel()
	<-e.done
}

func fileSHA384(path string) ([48]byte, error) {
	var sum [48]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha512.New384()
	if _, err := io.Copy(h, f); err != nil {
		return sum, fmt.Errorf("read %s: %w", path, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
