package task

import (
	"context"
	"crypto/sha512"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/cloak-containers/cloak/measurements"
	"github.com/cloak-containers/cloak/shim/emulatedsnp"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// emulatedSP is the emulated SEV-SNP secure processor of one VM, serving
// the guest's report requests on the VM's cloak.sp port.
type emulatedSP struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startEmulatedSP measures the boot artifacts qcfg starts (kernel, initrd,
// command line: measurements.EmulatedLaunchDigest), binds sha256(initdata)
// as HOST_DATA and serves the VM's SP socket until stop. The artifacts are
// hashed from the files QEMU is given; one swapped between hashing and
// QEMU's read would go unnoticed, which is one reason the evidence is only
// ever "emulated".
// chainDir holds the machine's test-only chain (config emulated_snp_dir).
func startEmulatedSP(qcfg qemu.Config, chainDir string, initdata []byte, logger *slog.Logger) (*emulatedSP, error) {
	root, err := emulatedsnp.LoadOrCreate(chainDir)
	if err != nil {
		return nil, fmt.Errorf("emulated SNP: %w", err)
	}
	kernel, err := fileSHA384(qcfg.Kernel)
	if err != nil {
		return nil, fmt.Errorf("emulated SNP launch measurement: %w", err)
	}
	initrd, err := fileSHA384(qcfg.Initrd)
	if err != nil {
		return nil, fmt.Errorf("emulated SNP launch measurement: %w", err)
	}
	hostData, err := emulatedsnp.HostDataFor(initdata)
	if err != nil {
		return nil, fmt.Errorf("emulated SNP HOST_DATA: %w", err)
	}
	launch := emulatedsnp.Launch{HostData: hostData}
	copy(launch.Measurement[:], measurements.EmulatedLaunchDigestFromHashes(kernel, initrd, sha512.Sum384([]byte(qcfg.Cmdline))))
	sp, err := emulatedsnp.New(root, launch)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &emulatedSP{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		sp.Run(ctx, qcfg.SPSocket(), func(format string, args ...any) { logger.Warn(fmt.Sprintf(format, args...)) })
	}()
	logger.Info("emulated SNP secure processor serving", "socket", qcfg.SPSocket(), "measurement", fmt.Sprintf("%x", launch.Measurement), "chain", chainDir)
	return e, nil
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
