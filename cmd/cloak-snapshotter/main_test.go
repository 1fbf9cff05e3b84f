package main

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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
		{name: "log level", o: options{address: filepath.Join(dir, "a.sock"), root: filepath.Join(dir, "r1"), logLevel: "loud"}, want: "--log-level"},
		{name: "root", o: options{address: filepath.Join(dir, "b.sock"), root: notDir, logLevel: "info"}, want: "--root"},
		{name: "address", o: options{address: notDir, root: filepath.Join(dir, "r2"), logLevel: "info"}, want: "--address: " + notDir + " exists and is not a socket"},
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

func TestRunStopsCleanly(t *testing.T) {
	dir := t.TempDir()
	o := options{address: filepath.Join(dir, "s.sock"), root: filepath.Join(dir, "root"), logLevel: "info"}
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
}
