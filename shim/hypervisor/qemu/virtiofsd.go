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

// virtiofsdGrace is how long stop waits for virtiofsd after SIGTERM.
const virtiofsdGrace = 5 * time.Second

// virtiofsd is the virtio-fs daemon of one VM, serving SharedFS.Dir on
// VirtiofsdSocket until stopped (or until QEMU disconnects).
type virtiofsd struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// virtiofsdArgs are virtiofsd's (the Rust one's) options. It runs in its
// own mount namespace (its default sandbox) and sees mounts made under Dir
// later only through mount propagation: the caller makes Dir a shared
// mount. --announce-submounts gives each such bind its own st_dev in the
// guest, so inode numbers of different host filesystems do not collide.
func virtiofsdArgs(cfg Config) []string {
	return []string{
		"--socket-path=" + cfg.VirtiofsdSocket(),
		"--shared-dir=" + cfg.SharedFS.Dir,
		"--cache=auto",
		"--announce-submounts",
	}
}

// startVirtiofsd runs virtiofsd for cfg and waits until its socket exists.
func startVirtiofsd(ctx context.Context, cfg Config, logger *slog.Logger) (*virtiofsd, error) {
	bin := cfg.SharedFS.Virtiofsd
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("virtiofsd: %w (install virtiofsd, or set virtiofsd in the cloak configuration, or shared_fs = \"none\")", err)
	}
	logFile, err := os.OpenFile(cfg.VirtiofsdLog(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("virtiofsd log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, virtiofsdArgs(cfg)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start virtiofsd: %w", err)
	}
	v := &virtiofsd{cmd: cmd, log: cfg.VirtiofsdLog(), exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(v.exited)
	}()
	t := time.NewTicker(qmpRetryInterval)
	defer t.Stop()
	for {
		if _, err := os.Stat(cfg.VirtiofsdSocket()); err == nil {
			logger.Info("virtiofsd: started", "pid", cmd.Process.Pid, "shared_dir", cfg.SharedFS.Dir)
			return v, nil
		}
		select {
		case <-v.exited:
			return nil, fmt.Errorf("virtiofsd exited before serving %s: %s\nvirtiofsd log %s:\n%s", cfg.VirtiofsdSocket(), cmd.ProcessState, v.log, tail(v.log, logTailLines))
		case <-ctx.Done():
			v.stop()
			return nil, fmt.Errorf("virtiofsd did not create %s: %w", cfg.VirtiofsdSocket(), ctx.Err())
		case <-t.C:
		}
	}
}

// stop ends virtiofsd by its pid: SIGTERM, then SIGKILL after the grace.
func (v *virtiofsd) stop() {
	select {
	case <-v.exited:
		return
	default:
	}
	if err := v.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = v.cmd.Process.Kill()
	}
	select {
	case <-v.exited:
	case <-time.After(virtiofsdGrace):
		_ = v.cmd.Process.Kill()
		<-v.exited
	}
}
