package task

import (
	"context"
	"log/slog"
	"time"

	"github.com/containerd/log"
)

// logrusHandler is an slog.Handler that writes through a containerd log
// entry (logrus). The shim library sets that logger up (its level from
// containerd's --debug, its format and output containerd's log pipe), and
// the QEMU launcher packages log with slog: through this handler their
// lines get the same format, level and fields as the shim's own.
type logrusHandler struct {
	entry  *log.Entry
	prefix string // of the keys, from WithGroup: "group."
}

func newLogrusHandler(entry *log.Entry) slog.Handler { return logrusHandler{entry: entry} }

func (h logrusHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.entry.Logger.IsLevelEnabled(logrusLevel(l))
}

func (h logrusHandler) Handle(_ context.Context, r slog.Record) error {
	fields := make(log.Fields, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		addField(fields, h.prefix, a)
		return true
	})
	e := h.entry.WithFields(fields)
	if !r.Time.IsZero() {
		e = e.WithTime(r.Time)
	}
	e.Log(logrusLevel(r.Level), r.Message)
	return nil
}

func (h logrusHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	fields := make(log.Fields, len(attrs))
	for _, a := range attrs {
		addField(fields, h.prefix, a)
	}
	return logrusHandler{entry: h.entry.WithFields(fields), prefix: h.prefix}
}

func (h logrusHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return logrusHandler{entry: h.entry, prefix: h.prefix + name + "."}
}

// addField adds a to fields as slog's text handler names it (group.key).
// Times become RFC 3339 strings: logrus would print a time.Time with
// String(), which no log reader parses.
func addField(fields log.Fields, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindGroup:
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			addField(fields, p, g)
		}
		return
	case slog.KindTime:
		fields[prefix+a.Key] = v.Time().Format(time.RFC3339Nano)
		return
	}
	if a.Equal(slog.Attr{}) {
		return
	}
	fields[prefix+a.Key] = v.Any()
}

// logrusLevel maps slog's levels onto logrus's, never to fatal or panic
// (which would exit); below debug is trace.
func logrusLevel(l slog.Level) log.Level {
	switch {
	case l >= slog.LevelError:
		return log.ErrorLevel
	case l >= slog.LevelWarn:
		return log.WarnLevel
	case l >= slog.LevelInfo:
		return log.InfoLevel
	case l >= slog.LevelDebug:
		return log.DebugLevel
	}
	return log.TraceLevel
}
