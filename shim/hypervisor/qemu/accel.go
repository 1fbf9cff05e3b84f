package qemu

import (
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// KVMProbe reports whether KVM can run ordinary guests on this host: nil if
// it can, otherwise an error saying why not.
type KVMProbe func() error

// ProbeKVM is the KVMProbe for this host.
func ProbeKVM() error { return probeKVM("/dev/kvm", "/sys/module/kvm_pvm") }

// kvmAPIVersion is the only KVM API version Linux has ever reported.
const kvmAPIVersion = 12

// kvmGetAPIVersion is _IO(KVMIO, 0x00), KVMIO = 0xAE.
const kvmGetAPIVersion = 0xAE00

func probeKVM(devKVM, pvmModule string) error {
	// PVM (pagetable-based nested virtualization) exposes /dev/kvm but a
	// standard guest kernel dies in its decompressor with an emulation
	// failure, so KVM must not be picked there.
	if _, err := os.Stat(pvmModule); err == nil {
		return fmt.Errorf("host KVM is PVM (%s exists), which cannot boot standard guest kernels", pvmModule)
	}
	f, err := os.OpenFile(devKVM, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", devKVM, err)
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("%s does not answer KVM_GET_API_VERSION: %w", devKVM, err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%s reports KVM API version %d, want %d", devKVM, v, kvmAPIVersion)
	}
	return nil
}

// ResolveAccel turns AccelAuto into AccelKVM or AccelTCG using probe, and
// logs why when it falls back to TCG. A confidential guest never falls back:
// without KVM it cannot run at all, which is an error.
func ResolveAccel(cfg Config, probe KVMProbe, logger *slog.Logger) (Accel, error) {
	cfg = cfg.withDefaults()
	if cfg.Accel != AccelAuto {
		return cfg.Accel, nil
	}
	err := probe()
	if err == nil {
		return AccelKVM, nil
	}
	if cfg.TEE.Kind != TEENone {
		return "", fmt.Errorf("%s needs KVM, which is unusable here: %w", cfg.TEE.Kind, err)
	}
	logger.Info("qemu: using TCG, KVM is unusable", "reason", err.Error())
	return AccelTCG, nil
}
