package integration

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
	tdxverifier "github.com/cloak-containers/cloak/kbs/verifier/tdx"
	"github.com/cloak-containers/cloak/measurements"
	"github.com/cloak-containers/cloak/shim/emulatedtdx"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// bootEmulatedTDX boots the guest image with the cloak.sp port served by
// the emulated TDX quoting service (MRTD = launch digest, MRCONFIGID =
// the launch initdata's digest), recording its answers.
func bootEmulatedTDX(t *testing.T, root *emulatedtdx.Root, launchInitdata []byte) (*qemu.VM, *recorder, []byte) {
	t.Helper()
	dir := guestImage(t)
	kernel, initrd, cmdline := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img"), imageCmdline(t, dir)
	kb, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	ib, err := os.ReadFile(initrd)
	if err != nil {
		t.Fatal(err)
	}
	mrtd := measurements.EmulatedLaunchDigest(kb, ib, cmdline)
	var launch emulatedtdx.Launch
	copy(launch.MRTD[:], mrtd)
	if launch.MRCONFIGID, err = emulatedtdx.MRConfigIDFor(launchInitdata); err != nil {
		t.Fatal(err)
	}
	qs := emulatedtdx.New(root, launch)

	run := filepath.Join(t.TempDir(), "vm")
	console := filepath.Join(t.TempDir(), "console.log")
	cfg := qemu.Config{
		Machine: qemu.MachineQ35, Accel: qemu.AccelAuto, VCPUs: 2, MemoryMiB: 1024,
		Kernel: kernel, Initrd: initrd, Cmdline: cmdline,
		ConsoleLog: console, RunDir: run,
		Agent:      qemu.Agent{Kind: qemu.AgentVirtioSerial},
		Network:    qemu.Network{Kind: qemu.NetworkUser},
		EmulatedSP: true,
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm, err := qemu.Start(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	pid := vm.Pid()
	conn, err := net.Dial("unix", cfg.SPSocket())
	if err != nil {
		vm.Stop(ctx)
		t.Fatalf("connect to the SP port: %v", err)
	}
	rec := &recorder{Conn: conn}
	served := make(chan error, 1)
	go func() { served <- qs.Serve(rec) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := vm.Stop(ctx); err != nil {
			t.Errorf("stop VM: %v", err)
		}
		conn.Close()
		<-served
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("QEMU pid %d still exists after Stop", pid)
		}
		if t.Failed() {
			if b, err := os.ReadFile(console); err == nil {
				t.Logf("guest console:\n%s", tailLines(string(b), 60))
			}
		}
	})
	return vm, rec, mrtd
}

// TestEmulatedTDX boots the guest with the emulated TDX platform:
// CreateSandbox's initdata check makes the guest ask PLATFORM and then for a
// quote over cloak.sp; that quote verifies with the KBS's TDX verifier
// against the emulated root and the collateral directory the platform
// wrote (offline), with MRTD = launch digest and MRCONFIGID = the initdata
// digest. Initdata changed after launch is refused.
func TestEmulatedTDX(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "emulated-tdx")
	root, err := emulatedtdx.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := tdxverifier.New(tdxverifier.Options{
		Collateral: collateral.New(collateral.Options{Dir: filepath.Join(dir, emulatedtdx.CollateralDir), Offline: true}),
		ExtraRoots: []*x509.Certificate{root.RootCA},
	})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("matching initdata", func(t *testing.T) {
		initdata := emulatedInitdata("launched")
		vm, rec, mrtd := bootEmulatedTDX(t, root, initdata)
		c := connectAgent(t, vm)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := c.CreateSandbox(ctx, sandboxRequest(initdata)); err != nil {
			t.Fatalf("CreateSandbox with the launch initdata: %v", err)
		}
		var quote []byte
		for _, a := range rec.answers() {
			if f := strings.Split(a, " "); len(f) == 3 && f[0] == "OK" && f[2] != emulatedtdx.PlatformName {
				if quote, err = base64.StdEncoding.DecodeString(f[2]); err != nil {
					t.Fatal(err)
				}
			}
		}
		if quote == nil {
			t.Fatalf("the guest asked for no quote (answers %q)", rec.answers())
		}
		claims, err := v.VerifyQuote(ctx, quote, nil, nil, nil)
		if err != nil {
			t.Fatalf("the guest's quote does not verify with the KBS verifier: %v", err)
		}
		want, err := emulatedtdx.MRConfigIDFor(initdata)
		if err != nil {
			t.Fatal(err)
		}
		if claims["emulated"] != true || claims["mr_td"] != hex.EncodeToString(mrtd) || claims["mr_config_id"] != hex.EncodeToString(want[:]) {
			t.Errorf("claims emulated %v mr_td %v mr_config_id %v, want true %x %x", claims["emulated"], claims["mr_td"], claims["mr_config_id"], mrtd, want)
		}
		if claims["report_data"] == hex.EncodeToString(make([]byte, 64)) {
			t.Error("the guest asked with all-zero report data; its check needs a fresh nonce")
		}
	})

	t.Run("initdata changed after launch", func(t *testing.T) {
		vm, _, _ := bootEmulatedTDX(t, root, emulatedInitdata("launched"))
		c := connectAgent(t, vm)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, err := c.CreateSandbox(ctx, sandboxRequest(emulatedInitdata("swapped by the host")))
		if err == nil || !strings.Contains(err.Error(), "MRCONFIGID") {
			t.Fatalf("CreateSandbox = %v, want a refusal naming MRCONFIGID", err)
		}
	})
}
