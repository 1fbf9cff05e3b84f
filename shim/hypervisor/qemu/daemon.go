package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// daemonGrace is how long stop waits for a helper daemon after SIGTERM.
const daemonGrace = 5 * time.Second

// daemon is a helper process of one VM (virtiofsd, swtpm) that serves a
// unix socket QEMU connects to.
type daemon struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// startDaemon starts cmd in its own process group and waits until it has
// created socket. name names it in errors and in the log line, which also
// carries attrs; on failure the tail of logPath, its log, is in the error.
func startDaemon(ctx context.Context, name string, cmd *exec.Cmd, socket, logPath string, logger *slog.Logger, attrs ...any) (*daemon, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(d.exited)
	}()
	t := time.NewTicker(qmpRetryInterval)
	defer t.Stop()
	for {
		if _, err := os.Stat(socket); err == nil {
			logger.Info(name+": started", append([]any{"pid", cmd.Process.Pid}, attrs...)...)
			return d, nil
		}
		select {
		case <-d.exited:
			return nil, fmt.Errorf("%s exited before serving %s: %s\n%s log %s:\n%s", name, socket, cmd.ProcessState, name, logPath, tail(logPath, logTailLines))
		case <-ctx.Done():
			d.stop()
			return nil, fmt.Errorf("%s did not create %s: %w", name, socket, ctx.Err())
		case <-t.C:
		}
	}
}

// stop ends the daemon by its pid: SIGTERM, then SIGKILL after the grace.
func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = d.cmd.Process.Kill()
	}
	select {
	case <-d.exited:
	case <-time.After(daemonGrace):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}
