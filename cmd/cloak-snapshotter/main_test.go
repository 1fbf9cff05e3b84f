package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/log"

	"github.com/cloak-containers/cloak/internal/logging"
	"github.com/cloak-containers/cloak/internal/version"
)

// TestCommandLine: mistakes exit 2 before anything listens, naming what is
// wrong and where the usage is; --version exits 0.
func TestCommandLine(t *testing.T) {
	tests := []struct {
		name         string
		args         []string
		code         int
		stdout, want string
	}{
		{"unknown flag", []string{"--bogus"}, 2, "", "cloak-snapshotter: unknown flag: --bogus\n  run 'cloak-snapshotter --help' for usage\n"},
		{"stray argument", []string{"serve"}, 2, "", `unknown command "serve"`},
		{"version", []string{"--version"}, 0, "cloak-snapshotter version " + version.String() + "\n", ""},
		{"bad log level", []string{"--log-level", "trace"}, 2, "", "cloak-snapshotter: --log-level \"trace\": want debug, info, warn or error\n  run 'cloak-snapshotter --help' for usage\n"},
		{"bad log format", []string{"--log-format", "xml"}, 2, "", "cloak-snapshotter: --log-format \"xml\": want text or json\n  run 'cloak-snapshotter --help' for usage\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := execute(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code || stdout.String() != tt.stdout || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit %d, want %d\nstdout %q, want %q\nstderr %q, want it to contain %q", code, tt.code, stdout.String(), tt.stdout, stderr.String(), tt.want)
			}
		})
	}
}

var textInfo = &logging.Options{Format: logging.Text, Level: "info"}

func TestRunRefusals(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		o    options
		want string
	}{
		{name: "log level", o: options{address: filepath.Join(dir, "a.sock"), root: filepath.Join(dir, "r1"), logOpts: &logging.Options{Format: "text", Level: "loud"}}, want: "--log-level"},
		{name: "root", o: options{address: filepath.Join(dir, "b.sock"), root: notDir, logOpts: textInfo}, want: "--root"},
		{name: "address", o: options{address: notDir, root: filepath.Join(dir, "r2"), logOpts: textInfo}, want: "--address: " + notDir + " exists and is not a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run: %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

// TestRunStopsCleanly also checks --log-format json: the line that says
// where it serves is a JSON object in containerd's logger.
func TestRunStopsCleanly(t *testing.T) {
	dir := t.TempDir()
	o := options{address: filepath.Join(dir, "s.sock"), root: filepath.Join(dir, "root"), logOpts: &logging.Options{Format: logging.JSON, Level: "info"}}
	var logged syncBuffer
	out, formatter := log.L.Logger.Out, log.L.Logger.Formatter
	log.L.Logger.SetOutput(&logged)
	defer func() { log.L.Logger.SetOutput(out); log.L.Logger.SetFormatter(formatter) }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, o) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", o.address); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no socket within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after stop: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
	if _, err := os.Lstat(o.address); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left (lstat: %v)", err)
	}
	line, _, _ := strings.Cut(logged.String(), "\n")
	var rec struct{ Level, Msg, Address string }
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Level != "info" || rec.Msg != "serving the snapshots API" || rec.Address != o.address {
		t.Errorf("first log line %q (%v), want the JSON serving line", line, err)
	}
}

// syncBuffer is a bytes.Buffer for a logger on another goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
