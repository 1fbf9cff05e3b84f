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

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/guest-image/build"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// BenchmarkBoot measures QEMU start -> agent channel answered, in one run,
// for:
//
//	cloak          the image's default boot: Cloak's kernel, the verified
//	               read-only root disk, no initrd (agent Check answered)
//	floor          the same kernel with a trivial static /init in an initrd
//	               that only writes "ready" to the agent port
//	debian-kernel  the same userland on Debian's cloud kernel (debian/:
//	               initrd with modules), agent Check answered
//
// and, once the guest is up, QEMU's memory besides guest RAM (PSS of every
// mapping but guest RAM, from /proc/PID/smaps) and the guest's own used
// memory (MemTotal - MemAvailable, from the agent).
//
//	make bench-boot
func BenchmarkBoot(b *testing.B) {
	dir := guestImage(b)
	m, err := build.ReadManifest(dir)
	if err != nil {
		b.Fatal(err)
	}
	kernel := filepath.Join(dir, build.KernelFile)
	floorInitrd := trivialInitrd(b)
	agentBoot := func(b *testing.B, g guestBoot) {
		var nonRAM, used int64
		for b.Loop() {
			vm := startBenchVM(b, g)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			c, err := dialReadyAgent(ctx, vm)
			if err != nil {
				cancel()
				b.Fatal(err)
			}
			b.StopTimer()
			nonRAM += qemuNonRAM(b, vm.Pid(), benchMemoryMiB)
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
		b.ReportMetric(float64(nonRAM)/float64(b.N)/(1<<20), "qemu-nonram-MiB")
		b.ReportMetric(float64(used)/float64(b.N)/(1<<20), "guest-used-MiB")
	}
	b.Run("cloak", func(b *testing.B) { agentBoot(b, imageBoot(b, dir)) })
	b.Run("floor", func(b *testing.B) {
		var nonRAM int64
		for b.Loop() {
			vm := startBenchVM(b, guestBoot{Kernel: kernel, Initrd: floorInitrd, Cmdline: build.Cmdline})
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			if err := vm.WaitAgent(ctx, readyProbe); err != nil {
				cancel()
				b.Fatal(err)
			}
			cancel()
			b.StopTimer()
			nonRAM += qemuNonRAM(b, vm.Pid(), benchMemoryMiB)
			stopBenchVM(b, vm)
			b.StartTimer()
		}
		b.ReportMetric(float64(nonRAM)/float64(b.N)/(1<<20), "qemu-nonram-MiB")
	})
	b.Run("debian-kernel", func(b *testing.B) {
		agentBoot(b, guestBoot{
			Kernel:  filepath.Join(dir, build.DebianDir, build.KernelFile),
			Initrd:  filepath.Join(dir, build.DebianDir, build.InitrdFile),
			Cmdline: m.Debian.Cmdline,
		})
	})
}

// benchMemoryMiB is the benchmark VMs' RAM, the handlers' default.
const benchMemoryMiB = 512

func startBenchVM(b *testing.B, g guestBoot) *qemu.VM {
	cfg := qemu.Config{
		Machine: qemu.MachineQ35, Accel: qemu.AccelAuto, VCPUs: 1, MemoryMiB: benchMemoryMiB,
		Kernel: g.Kernel, Initrd: g.Initrd, RootDisk: g.RootDisk, Cmdline: g.Cmdline,
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

// qemuNonRAM is QEMU's proportional set size without guest RAM: the PSS of
// every mapping in /proc/PID/smaps except those at least memMiB large (guest
// RAM is one anonymous mapping of the VM's memory size, a little more for
// alignment). What is left is QEMU itself: its heap, the TCG translation
// cache, device state, its share of the libraries.
func qemuNonRAM(b *testing.B, pid, memMiB int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var total int64
	skip := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(fields[0], "-"); ok && !strings.HasSuffix(fields[0], ":") {
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				skip = end-start >= uint64(memMiB)<<20
				continue
			}
		}
		if fields[0] == "Pss:" && !skip && len(fields) >= 2 {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return total
}
