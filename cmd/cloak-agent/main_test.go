package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/internal/logging"
	"github.com/cloak-containers/cloak/internal/version"
)

func TestFlags(t *testing.T) {
	const hint = "\n  run 'cloak-agent --help' for usage\n"
	tests := []struct {
		name         string
		args         []string
		code         int
		stdout, want string
	}{
		{"help", []string{"--help"}, 0, "", "--listen unix:/tmp/agent.sock"},
		{"not pid 1 without --listen", nil, 2, "", "cloak-agent: not running as PID 1: pass --listen unix:/path.sock to serve on a unix socket" + hint},
		{"bad listen", []string{"--listen", "tcp:1.2.3.4:1"}, 2, "", `cloak-agent: --listen "tcp:1.2.3.4:1": want unix:/path.sock` + hint},
		{"stray argument", []string{"--listen", "unix:/x", "extra"}, 2, "", `cloak-agent: unexpected arguments ["extra"]` + hint},
		{"unknown flag", []string{"--bogus"}, 2, "", "cloak-agent: flag provided but not defined: -bogus" + hint},
		{"bad log level", []string{"--listen", "unix:/x", "--log-level", "loud"}, 2, "", `cloak-agent: --log-level "loud": want debug, info, warn or error` + hint},
		{"bad log format", []string{"--listen", "unix:/x", "--log-format", "xml"}, 2, "", `cloak-agent: --log-format "xml": want text or json` + hint},
		{"version", []string{"--version"}, 0, "cloak-agent version " + version.String() + "\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, false, &stdout, &stderr)
			if code != tt.code || stdout.String() != tt.stdout || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit %d, want %d\nstdout %q, want %q\nstderr %q, want it to contain %q", code, tt.code, stdout.String(), tt.stdout, stderr.String(), tt.want)
			}
			if tt.name != "help" && strings.Contains(stderr.String(), "-state-dir") {
				t.Errorf("the whole usage printed: %q", stderr.String())
			}
		})
	}
	if o, err := parseFlags(nil, true, &bytes.Buffer{}); err != nil || !o.applyNetwork || o.stateDir != "/run/cloak" || *o.log != (logging.Options{Format: "json", Level: "info"}) {
		t.Fatalf("PID 1 defaults: %+v %v", o, err)
	}
}

// TestServeUnixSocket runs the agent off PID 1, as a developer would, and
// stops it with SIGTERM.
func TestServeUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"--listen", "unix:" + sock, "--state-dir", t.TempDir()}, false, &bytes.Buffer{}, &stderr)
	}()

	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := agentapi.NewAgentServiceClient(cc)
	if r, err := c.Check(ctx, &agentapi.CheckRequest{}, grpc.WaitForReady(true)); err != nil || r.Status != "SERVING" {
		t.Fatalf("Check: %v %v", r, err)
	}
	// serve's signal handler is installed before it listens, so the test
	// process receives this SIGTERM as a notification, not a kill.
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, stderr.String())
		}
		// The host reads these JSON lines on the console and ci/ greps
		// them: the default format is slog's JSON, keys in this order.
		line, _, _ := strings.Cut(stderr.String(), "\n")
		if _, rest, ok := strings.Cut(line, `","level":`); !ok || !strings.HasPrefix(line, `{"time":"`) ||
			!strings.HasPrefix(rest, `"INFO","msg":"serving","component":"cloak-agent","addr":"`) {
			t.Errorf("first log line %q, want slog JSON: time, level, msg, component, addr", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent still serving 20s after SIGTERM")
	}
}
