package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeVirtiofsdEnv makes the test binary act as virtiofsd: it serves the
// --socket-path until SIGTERM, or fails at once with a message when the
// variable is "fail".
const fakeVirtiofsdEnv = "CLOAK_TEST_FAKE_VIRTIOFSD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeVirtiofsdEnv); mode != "" {
		os.Exit(fakeVirtiofsd(mode))
	}
	os.Exit(m.Run())
}

func fakeVirtiofsd(mode string) int {
	if mode == "fail" {
		fmt.Fprintln(os.Stderr, "error: shared directory does not exist")
		return 1
	}
	sock := ""
	for _, a := range os.Args[1:] {
		if v, ok := strings.CutPrefix(a, "--socket-path="); ok {
			sock = v
		}
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer l.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	return 0
}

func fakeVirtiofsdConfig(t *testing.T, mode string) Config {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeVirtiofsdEnv, mode)
	run := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	return Config{RunDir: run, SharedFS: SharedFS{Dir: t.TempDir(), Virtiofsd: self}}.withDefaults()
}

func TestVirtiofsdStartStop(t *testing.T) {
	cfg := fakeVirtiofsdConfig(t, "serve")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := startVirtiofsd(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	pid := v.cmd.Process.Pid
	if _, err := os.Stat(cfg.VirtiofsdSocket()); err != nil {
		t.Errorf("socket after start: %v", err)
	}
	args := strings.Join(v.cmd.Args, " ")
	for _, want := range []string{"--shared-dir=" + cfg.SharedFS.Dir, "--socket-path=" + cfg.VirtiofsdSocket(), "--announce-submounts"} {
		if !strings.Contains(args, want) {
			t.Errorf("virtiofsd args %q lack %q", args, want)
		}
	}
	v.stop()
	assertGone(t, pid)
	v.stop() // a second stop is a no-op
}

func TestVirtiofsdFailures(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t.Run("exits at once", func(t *testing.T) {
		cfg := fakeVirtiofsdConfig(t, "fail")
		_, err := startVirtiofsd(ctx, cfg, testLogger(t))
		if err == nil || !strings.Contains(err.Error(), "shared directory does not exist") {
			t.Errorf("error %v, want virtiofsd's own message from its log", err)
		}
	})
	t.Run("missing binary", func(t *testing.T) {
		cfg := fakeVirtiofsdConfig(t, "serve")
		cfg.SharedFS.Virtiofsd = "/nonexistent/virtiofsd"
		_, err := startVirtiofsd(ctx, cfg, testLogger(t))
		if err == nil || !strings.Contains(err.Error(), "install virtiofsd") {
			t.Errorf("error %v, want one saying to install virtiofsd", err)
		}
	})
	t.Run("Start stops it when QEMU cannot start", func(t *testing.T) {
		cfg := fakeVirtiofsdConfig(t, "serve")
		if err := os.Remove(cfg.RunDir); err != nil {
			t.Fatal(err)
		}
		cfg.Accel = AccelTCG
		cfg.Binary = "/bin/false"
		_, err := Start(ctx, cfg, testLogger(t))
		if err == nil {
			t.Fatal("Start succeeded with /bin/false as QEMU")
		}
		// The fake's command line names the shared dir; none may be left.
		if pids := pidsNaming(t, "--shared-dir="+cfg.SharedFS.Dir); len(pids) > 0 {
			t.Errorf("virtiofsd left running: %v", pids)
		}
	})
}

// pidsNaming lists processes whose command line contains s.
func pidsNaming(t *testing.T, s string) []string {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []string
	for _, p := range procs {
		raw, err := os.ReadFile(p)
		if err == nil && strings.Contains(strings.ReplaceAll(string(raw), "\x00", " "), s) {
			if st, err := os.ReadFile(filepath.Join(filepath.Dir(p), "stat")); err == nil && strings.Contains(string(st), ") Z ") {
				continue
			}
			out = append(out, filepath.Base(filepath.Dir(p)))
		}
	}
	return out
}
