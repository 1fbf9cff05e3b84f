package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/cloak-containers/cloak/internal/testutil"
)

// These tests boot real QEMU under TCG without a kernel: the firmware finds
// nothing to boot and idles, which is enough for process lifecycle and QMP.

func needQEMU(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath(DefaultBinary); err != nil {
		t.Skipf("%s is not installed (ci/deps.sh installs it): %v", DefaultBinary, err)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func vmConfig(t *testing.T) Config {
	dir := t.TempDir()
	return Config{
		Accel:      AccelTCG,
		MemoryMiB:  128,
		RunDir:     filepath.Join(dir, "run"),
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
}

func startVM(t *testing.T, cfg Config) *VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vm, err := Start(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = vm.Stop(context.Background()) })
	return vm
}

// assertGone checks that no process with pid exists, zombie included: a
// zombie still answers kill(pid, 0).
func assertGone(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) = %v after Stop, want ESRCH (process or zombie left)", pid, err)
	}
}

// settledGoroutines waits briefly for goroutines to wind down and returns
// how many are left.
func settledGoroutines(limit int) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var n int
	_ = testutil.Poll(ctx, 10*time.Millisecond, func() (bool, error) {
		n = runtime.NumGoroutine()
		return n <= limit, nil
	})
	return n
}

func TestStartStop(t *testing.T) {
	needQEMU(t)
	tests := []struct {
		name    string
		machine Machine
		network NetworkKind
		vcpus   int
	}{
		{"q35", MachineQ35, NetworkNone, 2},
		{"microvm-user-net", MachineMicroVM, NetworkUser, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			cfg := vmConfig(t)
			cfg.Accel = AccelAuto
			cfg.Machine, cfg.Network.Kind, cfg.VCPUs = tt.machine, tt.network, tt.vcpus
			vm := startVM(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			wantAccel := AccelKVM
			if ProbeKVM() != nil {
				wantAccel = AccelTCG
			}
			if got := vm.Config().Accel; got != wantAccel {
				t.Errorf("accel auto resolved to %q, want %q (ProbeKVM: %v)", got, wantAccel, ProbeKVM())
			}
			for _, s := range []string{cfg.QMPSocket(), vm.AgentSocket()} {
				if fi, err := os.Stat(s); err != nil || fi.Mode().Type() != os.ModeSocket {
					t.Errorf("%s is not a socket while the VM runs: %v", s, err)
				}
			}
			if fi, err := os.Stat(cfg.RunDir); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("run dir mode: %v %v, want 0700", fi.Mode(), err)
			}

			if got, err := vm.Status(ctx); err != nil || got != "running" {
				t.Errorf("Status = %q, %v; want running", got, err)
			}
			if _, err := vm.qmp.run(ctx, vm.exited, "stop"); err != nil {
				t.Fatalf("qmp stop: %v", err)
			}
			if got, err := vm.Status(ctx); err != nil || got != "paused" {
				t.Errorf("Status after stop = %q, %v; want paused", got, err)
			}
			if got, err := vm.CPUs(ctx); err != nil || got != tt.vcpus {
				t.Errorf("CPUs = %d, %v; want %d", got, err, tt.vcpus)
			}

			pid := vm.Pid()
			if err := vm.Stop(ctx); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			select {
			case <-vm.Exited():
			default:
				t.Error("Exited not closed after Stop")
			}
			if err := vm.Wait(); err != nil {
				t.Errorf("Wait after Stop = %v, want nil", err)
			}
			assertGone(t, pid)
			if _, err := os.Stat(cfg.RunDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("run dir still there after Stop: %v", err)
			}
			if err := vm.Stop(ctx); err != nil {
				t.Errorf("second Stop = %v, want nil", err)
			}
			if _, err := vm.Status(ctx); err == nil {
				t.Error("Status succeeded after Stop")
			}
			// Slack of 2 for runtime goroutines (timers, GC workers).
			if after := settledGoroutines(before + 2); after > before+2 {
				t.Errorf("goroutines: %d before Start, %d after Stop", before, after)
			}
		})
	}
}

func TestStartFailsWithQEMUsMessage(t *testing.T) {
	needQEMU(t)
	// A wrapper that hands QEMU an option it does not know, as a wrong
	// QEMU version or a typo would.
	wrapper := filepath.Join(t.TempDir(), "qemu-wrapper")
	qemu, _ := exec.LookPath(DefaultBinary)
	script := "#!/bin/sh\nexec " + qemu + " -no-such-option \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	missingKernel := vmConfig(t)
	missingKernel.Kernel = filepath.Join(t.TempDir(), "no-vmlinuz")
	badOption := vmConfig(t)
	badOption.Binary = wrapper

	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"invalid option", badOption, []string{"-no-such-option: invalid option", "command: " + wrapper}},
		{"missing kernel", missingKernel, []string{"no-vmlinuz", "qemu log", "command: "}},
	}
	if _, err := os.Stat("/dev/vhost-vsock"); errors.Is(err, os.ErrNotExist) {
		vsock := vmConfig(t)
		vsock.Agent = Agent{Kind: AgentVsock, CID: 3}
		tests = append(tests, struct {
			name string
			cfg  Config
			want []string
		}{"vsock without vhost-vsock", vsock, []string{"vhost-vsock"}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			vm, err := Start(ctx, tt.cfg, testLogger(t))
			if err == nil {
				_ = vm.Stop(ctx)
				t.Fatal("Start succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if _, err := os.Stat(tt.cfg.RunDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("run dir left after failed Start: %v", err)
			}
		})
	}
}

func TestStartRefusesUsedRunDir(t *testing.T) {
	cfg := vmConfig(t)
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(cfg.RunDir, "keep")
	if err := os.WriteFile(keep, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("Start with a used run dir = %v, want a not-empty error", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("Start touched a run dir it refused: %v", err)
	}
}

func TestExitNoticed(t *testing.T) {
	needQEMU(t)
	tests := []struct {
		name    string
		end     func(t *testing.T, vm *VM)
		wantErr string // "" means Wait returns nil
	}{
		{"killed from outside", func(t *testing.T, vm *VM) {
			if err := syscall.Kill(vm.Pid(), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}, "signal: killed"},
		// With -no-reboot a guest reset ends QEMU normally, as a guest that
		// reboots or powers off does.
		{"guest reset", func(t *testing.T, vm *VM) {
			_, _ = vm.qmp.run(context.Background(), vm.exited, "system_reset")
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := startVM(t, vmConfig(t))
			pid := vm.Pid()
			tt.end(t, vm)
			select {
			case <-vm.Exited():
			case <-time.After(10 * time.Second):
				t.Fatal("Exited not closed 10 s after QEMU ended")
			}
			err := vm.Wait()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Wait = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Wait = %v, want an error containing %q", err, tt.wantErr)
			}
			if _, err := vm.Status(context.Background()); err == nil {
				t.Error("Status succeeded on an exited QEMU")
			}
			if err := vm.Stop(context.Background()); err != nil {
				t.Errorf("Stop after exit: %v", err)
			}
			assertGone(t, pid)
			if _, err := os.Stat(vm.Config().RunDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("run dir left: %v", err)
			}
		})
	}
}

func TestWaitAgent(t *testing.T) {
	needQEMU(t)
	cfg := vmConfig(t)
	if err := os.WriteFile(cfg.ConsoleLog, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	vm := startVM(t, cfg)

	t.Run("times out when the guest never opens the port", func(t *testing.T) {
		probed := false
		probe := func(context.Context, net.Conn) error { probed = true; return nil }
		const wait = 1500 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		start := time.Now()
		err := vm.WaitAgent(ctx, probe)
		took := time.Since(start)
		if err == nil {
			t.Fatal("WaitAgent succeeded with no agent in the guest")
		}
		if probed {
			t.Error("WaitAgent probed before the guest opened the port")
		}
		if took > wait+time.Second {
			t.Errorf("WaitAgent returned %s after a %s deadline", took, wait)
		}
		for _, w := range []string{"did not answer within 1.", `never opened virtio-serial port "cloak.agent"`, "guest console " + cfg.ConsoleLog} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error lacks %q:\n%v", w, err)
			}
		}
	})

	// This guest has no agent to answer the virtio-serial hello; the
	// handshake has its own test.
	vm.handshake = func(context.Context, net.Conn) error { return nil }

	t.Run("probes once the guest opens the port", func(t *testing.T) {
		// The event QEMU sends when the guest opens the port; no guest
		// kernel is needed to check what WaitAgent does with it.
		go func() {
			time.Sleep(200 * time.Millisecond)
			vm.handleEvent(qmp.Event{Event: "VSERPORT_CHANGE", Data: map[string]any{"id": idAgentPort, "open": true}})
		}()
		calls := 0
		probe := func(ctx context.Context, conn net.Conn) error {
			calls++
			if calls < 3 {
				return errors.New("not yet")
			}
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := vm.WaitAgent(ctx, probe); err != nil {
			t.Fatalf("WaitAgent: %v", err)
		}
		if calls != 3 {
			t.Errorf("probe ran %d times, want 3", calls)
		}
	})

	t.Run("ConnectAgent hands over the accepted connection", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := vm.ConnectAgent(ctx)
		if err != nil {
			t.Fatalf("ConnectAgent: %v", err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("still open\n")); err != nil {
			t.Fatalf("write on the returned connection: %v", err)
		}
	})

	t.Run("times out when the agent does not answer", func(t *testing.T) {
		// The port is open from the previous subtest; nothing in the guest
		// reads it, so the probe's read never returns.
		ping := func(ctx context.Context, conn net.Conn) error {
			if _, err := conn.Write([]byte("ping\n")); err != nil {
				return err
			}
			_, err := io.ReadFull(conn, make([]byte, 1))
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := vm.WaitAgent(ctx, ping)
		// One attempt usually; a second if the first failed early. Either
		// way the error must name the read that timed out.
		if err == nil || !strings.Contains(err.Error(), "attempts, last: read unix") {
			t.Errorf("WaitAgent = %v, want a timeout naming the failed read", err)
		}
	})

	t.Run("ignores other ports", func(t *testing.T) {
		vm.handleEvent(qmp.Event{Event: "VSERPORT_CHANGE", Data: map[string]any{"id": "other", "open": false}})
		if open, _ := vm.agentPort(); !open {
			t.Error("an event for another port closed the agent port")
		}
		vm.handleEvent(qmp.Event{Event: "VSERPORT_CHANGE", Data: map[string]any{"id": idAgentPort, "open": false}})
		if open, _ := vm.agentPort(); open {
			t.Error("agent port still open after a close event")
		}
	})

	t.Run("stops when qemu exits", func(t *testing.T) {
		go func() {
			time.Sleep(300 * time.Millisecond)
			_ = syscall.Kill(vm.Pid(), syscall.SIGKILL)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		start := time.Now()
		err := vm.WaitAgent(ctx, func(context.Context, net.Conn) error { return errors.New("no") })
		if err == nil || !strings.Contains(err.Error(), "qemu exited while waiting") {
			t.Fatalf("WaitAgent = %v, want a qemu-exited error", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("WaitAgent noticed the exit only after %s", took)
		}
	})
}

func TestStopKillsHungQEMU(t *testing.T) {
	needQEMU(t)
	before := runtime.NumGoroutine()
	vm := startVM(t, vmConfig(t))
	pid := vm.Pid()
	// A stopped process answers nothing, as a wedged QEMU would; SIGKILL
	// still ends it.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := vm.Status(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Status on a hung QEMU = %v, want a deadline error", err)
	}

	const grace = 500 * time.Millisecond
	ctx, cancel = context.WithTimeout(context.Background(), grace)
	defer cancel()
	start := time.Now()
	if err := vm.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if took := time.Since(start); took > grace+2*time.Second {
		t.Errorf("Stop took %s with a %s deadline", took, grace)
	}
	assertGone(t, pid)
	if _, err := os.Stat(vm.Config().RunDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run dir left: %v", err)
	}
	// The abandoned QMP calls end once QEMU is gone.
	if after := settledGoroutines(before + 2); after > before+2 {
		t.Errorf("goroutines: %d before Start, %d after Stop", before, after)
	}
}

// TestRootDiskReadOnly checks with QEMU itself (query-block) that the root
// disk is attached read-only through the host page cache.
func TestRootDiskReadOnly(t *testing.T) {
	needQEMU(t)
	cfg := vmConfig(t)
	cfg.RootDisk = filepath.Join(t.TempDir(), "root.img")
	if err := os.WriteFile(cfg.RootDisk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	vm := startVM(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ret, err := vm.qmp.run(ctx, vm.exited, "query-block")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []struct {
		Device   string `json:"device"`
		Inserted *struct {
			File  string `json:"file"`
			RO    bool   `json:"ro"`
			Drv   string `json:"drv"`
			Cache struct {
				Direct bool `json:"direct"`
			} `json:"cache"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(ret, &blocks); err != nil {
		t.Fatalf("decode query-block: %v\n%s", err, ret)
	}
	if len(blocks) != 1 || blocks[0].Device != idRootDrive || blocks[0].Inserted == nil {
		t.Fatalf("query-block = %s, want the one drive %q", ret, idRootDrive)
	}
	in := blocks[0].Inserted
	if in.File != cfg.RootDisk || !in.RO || in.Drv != "raw" || in.Cache.Direct {
		t.Errorf("root drive = %+v, want %s, read-only, raw, cache.direct off", *in, cfg.RootDisk)
	}
}
