package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// Timeouts for the parts of Start and Stop the caller's context does not
// bound.
const (
	// qmpRetryInterval is how often Start looks for the QMP socket, which
	// QEMU creates only after parsing its whole command line.
	qmpRetryInterval = 10 * time.Millisecond
	// startTimeout bounds Start when ctx has no deadline of its own.
	startTimeout = 30 * time.Second
	// stopGrace is how long Stop waits for QEMU to exit after "quit" when
	// ctx has no deadline of its own.
	stopGrace = 10 * time.Second
	// logTailLines is how much of a log an error message quotes.
	logTailLines = 15
)

// VM is a running QEMU process with its QMP connection.
type VM struct {
	cfg     Config
	cmdline string
	cmd     *exec.Cmd
	log     *slog.Logger
	qmp     *qmpClient
	fs      *daemon // nil without SharedFS
	tpm     *daemon // nil without a vTPM

	exited  chan struct{} // closed once QEMU is reaped
	waitErr error         // valid after exited is closed

	stopping chan struct{} // closed when Stop begins, so exit is expected
	stopped  chan struct{} // closed when Stop's cleanup is done
	stopErr  error

	// Whether the guest has the virtio-serial agent port open, from QEMU's
	// VSERPORT_CHANGE events; portChanged is closed and replaced on change.
	portMu      sync.Mutex
	portOpen    bool
	portChanged chan struct{}

	// handshake starts each virtio-serial agent connection (serialHandshake;
	// tests without a guest agent replace it).
	handshake func(context.Context, net.Conn) error
}

// Start launches QEMU for cfg and connects to its QMP socket. ctx bounds the
// launch only (30 s without a deadline); the VM runs until Stop or until QEMU
// exits. logger may be nil.
func Start(ctx context.Context, cfg Config, logger *slog.Logger) (*VM, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("qemu config: %w", err)
	}
	accel, err := ResolveAccel(cfg, ProbeKVM, logger)
	if err != nil {
		return nil, fmt.Errorf("qemu config: %w", err)
	}
	cfg.Accel = accel
	args, err := Args(cfg)
	if err != nil {
		return nil, fmt.Errorf("qemu config: %w", err)
	}
	binary, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("find qemu: %w (install qemu-system-x86, or set Config.Binary)", err)
	}
	if err := makeRunDir(cfg.RunDir); err != nil {
		return nil, err
	}
	var fs *daemon
	if cfg.SharedFS.Dir != "" {
		// QEMU connects to its socket while it parses the command line.
		if fs, err = startVirtiofsd(ctx, cfg, logger); err != nil {
			_ = os.RemoveAll(cfg.RunDir)
			return nil, err
		}
	}
	var tpm *daemon
	if cfg.TPM.StateDir != "" {
		// QEMU connects to swtpm's control socket while it starts.
		if tpm, err = startSwtpm(ctx, cfg, logger); err != nil {
			if fs != nil {
				fs.stop()
			}
			_ = os.RemoveAll(cfg.RunDir)
			return nil, err
		}
	}
	vm, err := launch(ctx, cfg, binary, args, logger)
	if err != nil {
		if fs != nil {
			fs.stop()
		}
		if tpm != nil {
			tpm.stop()
		}
		_ = os.RemoveAll(cfg.RunDir)
		return nil, err
	}
	vm.fs = fs
	vm.tpm = tpm
	return vm, nil
}

// makeRunDir creates dir 0700, refusing one with content: Stop deletes the
// whole directory, so it must belong to this VM alone.
func makeRunDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create run dir: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("run dir %s is not empty (left over from an earlier VM?): remove it or pick another", dir)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	return nil
}

func launch(ctx context.Context, cfg Config, binary string, args []string, logger *slog.Logger) (*VM, error) {
	logFile, err := os.OpenFile(cfg.QEMULog(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("qemu log: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor

	// Not CommandContext: ctx bounds the launch, not the VM's life.
	// Stdin stays nil (/dev/null): QEMU never shares the caller's stdio.
	cmd := exec.Command(binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	for _, t := range cfg.Network.TAPs {
		cmd.ExtraFiles = append(cmd.ExtraFiles, t.File)
	}
	// Its own process group: a signal meant for the shim's group (a
	// terminal's ^C) does not reach QEMU, and Stop can kill the group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	vm := &VM{
		handshake:   serialHandshake,
		cfg:         cfg,
		cmdline:     commandLine(binary, args),
		cmd:         cmd,
		log:         logger.With("qemu_run_dir", cfg.RunDir),
		exited:      make(chan struct{}),
		stopping:    make(chan struct{}),
		stopped:     make(chan struct{}),
		portChanged: make(chan struct{}),
	}
	vm.log.Debug("qemu: starting", "cmdline", vm.cmdline)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w\ncommand: %s", err, vm.cmdline)
	}
	go vm.reap()

	vm.qmp, err = vm.connectQMP(ctx)
	if err != nil {
		vm.kill()
		<-vm.exited
		return nil, vm.startError(err)
	}
	go vm.watchEvents(vm.qmp.events())
	vm.log.Info("qemu: started", "pid", cmd.Process.Pid, "accel", cfg.Accel, "qemu_version", vm.qmp.version)
	return vm, nil
}

func (vm *VM) watchEvents(events <-chan qmp.Event) {
	for e := range events {
		vm.handleEvent(e)
	}
}

func (vm *VM) handleEvent(e qmp.Event) {
	if e.Event != "VSERPORT_CHANGE" || e.Data["id"] != idAgentPort {
		return
	}
	open, _ := e.Data["open"].(bool)
	vm.setAgentPortOpen(open)
	vm.log.Debug("qemu: guest agent port", "open", open)
}

func (vm *VM) setAgentPortOpen(open bool) {
	vm.portMu.Lock()
	defer vm.portMu.Unlock()
	if vm.portOpen == open {
		return
	}
	vm.portOpen = open
	close(vm.portChanged)
	vm.portChanged = make(chan struct{})
}

// agentPort reports whether the guest has the agent port open, and a channel
// closed at the next change.
func (vm *VM) agentPort() (bool, <-chan struct{}) {
	vm.portMu.Lock()
	defer vm.portMu.Unlock()
	return vm.portOpen, vm.portChanged
}

func (vm *VM) reap() {
	err := vm.cmd.Wait()
	select {
	case <-vm.stopping:
	default:
		if err == nil {
			vm.log.Info("qemu: exited (guest shut down)")
		} else {
			err = fmt.Errorf("qemu exited unexpectedly: %w\n%s", err, vm.qemuLogTail())
			vm.log.Warn("qemu: exited unexpectedly", "err", err)
		}
	}
	vm.waitErr = err
	close(vm.exited)
}

func (vm *VM) connectQMP(ctx context.Context) (*qmpClient, error) {
	t := time.NewTicker(qmpRetryInterval)
	defer t.Stop()
	for {
		c, err := dialQMP(ctx, vm.cfg.QMPSocket(), vm.exited)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, errNoSocket) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp socket %s did not appear: %w", vm.cfg.QMPSocket(), ctx.Err())
		case <-vm.exited:
			return nil, errors.New("qemu exited during start")
		case <-t.C:
		}
	}
}

// startError explains a failed launch with QEMU's own words and the command.
func (vm *VM) startError(err error) error {
	return fmt.Errorf("start qemu: %w\n%s\ncommand: %s", err, vm.qemuLogTail(), vm.cmdline)
}

func (vm *VM) qemuLogTail() string {
	return "qemu log " + vm.cfg.QEMULog() + ":\n" + tail(vm.cfg.QEMULog(), logTailLines)
}

// kill SIGKILLs QEMU's process group, unless QEMU is already reaped (then the
// group id may have been reused).
func (vm *VM) kill() {
	select {
	case <-vm.exited:
		return
	default:
	}
	if err := syscall.Kill(-vm.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		vm.log.Warn("qemu: kill process group", "err", err)
	}
	// Through the pidfd-backed handle as well: it cannot hit a reused pid.
	_ = vm.cmd.Process.Kill()
}

// Pid is QEMU's process id (also its process group id).
func (vm *VM) Pid() int { return vm.cmd.Process.Pid }

// Config is the configuration the VM was started with, defaults and the
// resolved accelerator filled in.
func (vm *VM) Config() Config { return vm.cfg }

// Exited is closed once QEMU has exited, for whatever reason.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// Wait blocks until QEMU exits. It returns nil after Stop or when the guest
// shut itself down, and an error quoting QEMU's log when QEMU failed or was
// killed by someone else.
func (vm *VM) Wait() error {
	<-vm.exited
	return vm.waitErr
}

// Status is QEMU's run state ("running", "paused", "prelaunch", ...).
func (vm *VM) Status(ctx context.Context) (string, error) {
	return vm.qmp.status(ctx, vm.exited)
}

// CPUs is the number of vCPUs QEMU reports.
func (vm *VM) CPUs(ctx context.Context) (int, error) {
	return vm.qmp.cpus(ctx, vm.exited)
}

// Stop asks QEMU to quit over QMP, waits for it to exit until ctx's deadline
// (10 s without one), then SIGKILLs its process group, and finally removes
// RunDir. It is safe to call more than once and after QEMU died on its own;
// later calls wait for the first one and return its result.
func (vm *VM) Stop(ctx context.Context) error {
	select {
	case <-vm.stopping:
		<-vm.stopped
		return vm.stopErr
	default:
		close(vm.stopping)
	}
	defer close(vm.stopped)

	if _, hasDeadline := ctx.Deadline(); !hasDeadline {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, stopGrace)
		defer cancel()
	}
	select {
	case <-vm.exited:
	default:
		if err := vm.qmp.quit(ctx, vm.exited); err != nil {
			vm.log.Debug("qemu: quit over qmp failed", "err", err)
		}
		select {
		case <-vm.exited:
		case <-ctx.Done():
			vm.log.Warn("qemu: did not quit in time, killing it", "pid", vm.Pid())
			vm.kill()
			<-vm.exited
		}
	}
	vm.qmp.close()
	if vm.fs != nil {
		vm.fs.stop()
	}
	if vm.tpm != nil {
		vm.tpm.stop()
	}
	if err := os.RemoveAll(vm.cfg.RunDir); err != nil {
		vm.stopErr = fmt.Errorf("remove qemu run dir: %w", err)
		return vm.stopErr
	}
	vm.log.Info("qemu: stopped")
	return nil
}

// AgentSocket is the unix socket of the virtio-serial agent channel, or ""
// for vsock.
func (vm *VM) AgentSocket() string {
	if vm.cfg.Agent.Kind != AgentVirtioSerial {
		return ""
	}
	return vm.cfg.AgentSocket()
}

// tail returns the last n lines of the file at path, reading at most its last
// 8 KiB, or a note saying why it could not.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	defer f.Close()
	const max = 8 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		if _, err := f.Seek(-max, io.SeekEnd); err != nil {
			return fmt.Sprintf("(cannot read: %v)", err)
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, max))
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	text := strings.TrimRight(string(b), "\n")
	if text == "" {
		return "  (empty)"
	}
	lines := strings.Split(text, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  | " + strings.Join(lines, "\n  | ")
}
