package task

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// TestLogrusHandler: the launcher's slog lines come out of the shim's
// logrus logger, in its format, at its level, with its entry's fields.
func TestLogrusHandler(t *testing.T) {
	var buf bytes.Buffer
	l := logrus.New()
	l.SetOutput(&buf)
	l.SetFormatter(&logrus.JSONFormatter{})
	l.SetLevel(logrus.InfoLevel)
	entry := logrus.NewEntry(l).WithField("namespace", "k8s.io")
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

	logger := slog.New(newLogrusHandler(entry)).With("vm", "pod1").WithGroup("qemu")
	logger.Debug("hidden")
	logger.Info("started", "pid", 42, "at", at, slog.Group("mem", "mib", 512))
	logger.Warn("slow")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("logged %q, want the info and warn lines only", buf.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"level": "info", "msg": "started", "namespace": "k8s.io", "vm": "pod1",
		"qemu.pid": float64(42), "qemu.at": "2026-01-02T03:04:05.000000006Z", "qemu.mem.mib": float64(512),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (line %s)", k, got[k], v, lines[0])
		}
	}
	if !strings.Contains(lines[1], `"level":"warning"`) {
		t.Errorf("warn line %s, want logrus's warning level", lines[1])
	}

	// containerd's --debug turns the logger to debug: the launcher's
	// debug lines follow without a new handler; text stays logrus text.
	buf.Reset()
	l.SetLevel(logrus.DebugLevel)
	l.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
	logger.Debug("shown", "path", "/run/a b")
	if got, want := buf.String(), "level=debug msg=shown namespace=k8s.io qemu.path=\"/run/a b\" vm=pod1\n"; got != want {
		t.Errorf("text line %q, want %q", got, want)
	}
}
