// Package logging is the one log setup of Cloak's binaries: the
// --log-format (text or json) and --log-level (debug, info, warn or error)
// flags, and the slog logger they describe.
package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// The formats of --log-format.
const (
	Text = "text" // slog's key=value lines, for people at a terminal
	JSON = "json" // one JSON object a line, for log collectors and for tools that grep "msg"
)

// Options are the values of the two flags.
type Options struct {
	Format, Level string
}

// FlagSet is what Flags needs of a flag set; the standard library's
// *flag.FlagSet and pflag's (cobra's) *pflag.FlagSet both have it.
type FlagSet interface {
	StringVar(p *string, name, value, usage string)
}

// Flags adds --log-format (default format) and --log-level (default info)
// to fs and returns where their values land.
func Flags(fs FlagSet, format string) *Options {
	o := &Options{}
	fs.StringVar(&o.Format, "log-format", format, "log format: text or json")
	fs.StringVar(&o.Level, "log-level", "info", "least severe log level shown: debug, info, warn or error")
	return o
}

// Check reports a bad flag value, for a caller to call before it starts
// (a command-line mistake, not a failure).
func (o *Options) Check() error {
	if o.Format != Text && o.Format != JSON {
		return fmt.Errorf("--log-format %q: want text or json", o.Format)
	}
	_, err := ParseLevel(o.Level)
	return err
}

// New is New(w, o.Format, o.Level).
func (o *Options) New(w io.Writer) (*slog.Logger, error) {
	return New(w, o.Format, o.Level)
}

// New returns a logger that writes format lines of level and above to w.
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	l, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case Text:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case JSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// ParseLevel reads a --log-level value. It takes only the four names
// (slog.Level's own parser also takes "INFO+2" and the like), so that
// every binary accepts the same values.
func ParseLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
}
