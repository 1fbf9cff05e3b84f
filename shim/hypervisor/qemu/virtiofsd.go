package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
)

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
func startVirtiofsd(ctx context.Context, cfg Config, logger *slog.Logger) (*daemon, error) {
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
	return startDaemon(ctx, "virtiofsd", cmd, cfg.VirtiofsdSocket(), cfg.VirtiofsdLog(), logger,
		"shared_dir", cfg.SharedFS.Dir)
}
