package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestArgsGoldenVTPM(t *testing.T) {
	cfg := baseConfig()
	cfg.Accel = AccelTCG
	cfg.Network = Network{Kind: NetworkUser}
	cfg.TPM = VTPM{StateDir: "/var/lib/cloak/tpm/pod1"}
	checkGolden(t, "none-q35-virtio-serial-user-vtpm", cfg)
}

func TestVTPMConfigErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"relative state dir", func(c *Config) { c.TPM.StateDir = "tpm" }, "relative"},
		{"microvm", func(c *Config) { c.Machine = MachineMicroVM }, `needs machine "q35"`},
		{"emulated SP is fine, snp is not", func(c *Config) {
			c.Accel, c.Firmware, c.TEE = AccelKVM, "/ovmf.fd", TEE{Kind: TEESNP, InitdataDigest: make([]byte, 32)}
		}, "cannot trust it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.Accel = AccelTCG
			cfg.TPM = VTPM{StateDir: "/var/lib/cloak/tpm/pod1"}
			tt.mutate(&cfg)
			if _, err := Args(cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Args: err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestStartStopVTPM starts QEMU with a swtpm vTPM (no guest kernel: QEMU
// itself must accept the TPM backend), and checks Stop ends swtpm too.
func TestStartStopVTPM(t *testing.T) {
	needQEMU(t)
	for _, tool := range []string{"swtpm", "swtpm_setup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (ci/vm-deps.sh installs swtpm and swtpm-tools): %v", tool, err)
		}
	}
	cfg := vmConfig(t)
	cfg.TPM = VTPM{StateDir: filepath.Join(t.TempDir(), "tpm")}
	vm := startVM(t, cfg)
	if _, err := os.Stat(filepath.Join(cfg.TPM.StateDir, "tpm2-00.permall")); err != nil {
		t.Errorf("swtpm_setup left no TPM state: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := vm.Status(ctx); err != nil || st != "running" {
		t.Fatalf("Status = %q, %v", st, err)
	}
	pid := vm.tpm.cmd.Process.Pid
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	<-vm.tpm.exited
	assertGone(t, pid)
}
