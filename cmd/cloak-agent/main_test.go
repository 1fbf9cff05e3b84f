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

	"github.com/cloak-containers/cloak/agentapi"
)

func TestFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		pid1    bool
		code    int
		wantErr string
	}{
		{"help", []string{"--help"}, false, 0, "--listen unix:/tmp/agent.sock"},
		{"not pid 1 without --listen", nil, false, 2, "not running as PID 1"},
		{"bad listen", []string{"--listen", "tcp:1.2.3.4:1"}, false, 2, "want unix:/path.sock"},
		{"stray argument", []string{"--listen", "unix:/x", "extra"}, false, 2, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(tt.args, tt.pid1, &stderr); code != tt.code || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr.String())
			}
		})
	}
	if o, err := parseFlags(nil, true, &bytes.Buffer{}); err != nil || !o.applyNetwork || o.stateDir != "/run/cloak" {
		t.Fatalf("PID 1 defaults: %+v %v", o, err)
	}
}

// TestServeUnixSocket runs the agent off PID 1, as a developer would, and
// stops it with SIGTERM.
func TestServeUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"--listen", "unix:" + sock, "--state-dir", t.TempDir()}, false, &stderr) }()

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
	case <-time.After(20 * time.Second):
		t.Fatal("agent still serving 20s after SIGTERM")
	}
}
