package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/agentapi"
	"github.com/cloak-containers/cloak/guest-image/build"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// BenchmarkBoot measures QEMU start -> agent channel answered, for the Cloak
// guest image (agent Check answered over gRPC) and, in the same run, for the
// floor: the same kernel and command line with a trivial static /init that
// only writes "ready" to the agent port. Also reports QEMU's RSS once the
// guest is up.
//
//	make bench-boot
func BenchmarkBoot(b *testing.B) {
	dir := guestImage(b)
	kernel, cmdline := filepath.Join(dir, "vmlinuz"), imageCmdline(b, dir)
	floorInitrd := trivialInitrd(b)

	b.Run("cloak", func(b *testing.B) {
		var rss, used int64
		for b.Loop() {
			vm := startBenchVM(b, kernel, filepath.Join(dir, "initrd.img"), cmdline)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			c, err := dialReadyAgent(ctx, vm)
			if err != nil {
				cancel()
				b.Fatal(err)
			}
			b.StopTimer()
			rss += vmRSS(b, vm.Pid())
			gs, err := c.GuestStats(ctx, &agentapi.GuestStatsRequest{})
			if err != nil {
				b.Fatal(err)
			}
			used += int64(gs.MemTotalBytes - gs.MemAvailableBytes)
			c.Close()
			cancel()
			stopBenchVM(b, vm)
			b.StartTimer()
		}
		b.ReportMetric(float64(rss)/float64(b.N)/(1<<20), "qemu-rss-MiB")
		b.ReportMetric(float64(used)/float64(b.N)/(1<<20), "guest-used-MiB")
	})
	b.Run("floor", func(b *testing.B) {
		var rss int64
		for b.Loop() {
			vm := startBenchVM(b, kernel, floorInitrd, cmdline)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			if err := vm.WaitAgent(ctx, readyProbe); err != nil {
				cancel()
				b.Fatal(err)
			}
			cancel()
			b.StopTimer()
			rss += vmRSS(b, vm.Pid())
			stopBenchVM(b, vm)
			b.StartTimer()
		}
		b.ReportMetric(float64(rss)/float64(b.N)/(1<<20), "qemu-rss-MiB")
	})
}

func startBenchVM(b *testing.B, kernel, initrd, cmdline string) *qemu.VM {
	cfg := qemu.Config{
		Machine: qemu.MachineQ35, Accel: qemu.AccelAuto, VCPUs: 1, MemoryMiB: 512,
		Kernel: kernel, Initrd: initrd, Cmdline: cmdline,
		RunDir:  filepath.Join(b.TempDir(), "vm"),
		Agent:   qemu.Agent{Kind: qemu.AgentVirtioSerial},
		Network: qemu.Network{Kind: qemu.NetworkUser},
	}
	vm, err := qemu.Start(context.Background(), cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	return vm
}

func stopBenchVM(b *testing.B, vm *qemu.VM) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := vm.Stop(ctx); err != nil {
		b.Fatal(err)
	}
}

// readyProbe waits for the trivial init's "ready" line.
func readyProbe(ctx context.Context, conn net.Conn) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	_ = conn.SetReadDeadline(deadline)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ready\n" {
		return fmt.Errorf("unexpected %q on the agent port", line)
	}
	return nil
}

// trivialInitrd builds testdata/trivialinit statically and packs it as the
// only file of an initrd, the same reproducible way as the real image.
func trivialInitrd(b *testing.B) string {
	dir := b.TempDir()
	bin := filepath.Join(dir, "init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/trivialinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build trivial init: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		b.Fatal(err)
	}
	initrd, err := build.TrivialInitrd(data)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "trivial.img")
	if err := os.WriteFile(path, initrd, 0o644); err != nil {
		b.Fatal(err)
	}
	return path
}

// vmRSS is the resident set of a process, from /proc/PID/status.
func vmRSS(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no VmRSS for pid %d", pid)
	return 0
}
