package logging

import (
	"bytes"
	"encoding/json"
	"flag"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestNew(t *testing.T) {
	tests := []struct {
		format, level string
		// want is a part of the info line's output; "" means no line.
		wantInfo, wantDebug string
	}{
		{Text, "info", "level=INFO msg=hello k=v\n", ""},
		{Text, "debug", "level=INFO msg=hello k=v\n", "level=DEBUG msg=quiet\n"},
		{JSON, "info", `"level":"INFO","msg":"hello","k":"v"}` + "\n", ""},
		{JSON, "debug", `"level":"INFO","msg":"hello","k":"v"}` + "\n", `"level":"DEBUG","msg":"quiet"}` + "\n"},
		{JSON, "warn", "", ""},
		{Text, "error", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.format+"/"+tt.level, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := New(&buf, tt.format, tt.level)
			if err != nil {
				t.Fatal(err)
			}
			log.Info("hello", "k", "v")
			info := buf.String()
			buf.Reset()
			log.Debug("quiet")
			debug := buf.String()
			for _, c := range []struct{ got, want string }{{info, tt.wantInfo}, {debug, tt.wantDebug}} {
				if c.want == "" && c.got != "" || !strings.HasSuffix(c.got, c.want) {
					t.Errorf("logged %q, want it to end in %q", c.got, c.want)
				}
				if tt.format == JSON && c.got != "" && !json.Valid([]byte(c.got)) {
					t.Errorf("not JSON: %q", c.got)
				}
			}
			log.Error("loud")
			if !strings.Contains(buf.String(), "loud") {
				t.Errorf("error line missing at level %s", tt.level)
			}
		})
	}
}

func TestBadValues(t *testing.T) {
	tests := []struct{ format, level, want string }{
		{"xml", "info", `--log-format "xml": want text or json`},
		{"", "info", `--log-format "": want text or json`},
		{"JSON", "info", `--log-format "JSON": want text or json`},
		{"text", "loud", `--log-level "loud": want debug, info, warn or error`},
		{"text", "INFO+2", `--log-level "INFO+2": want debug, info, warn or error`},
		{"json", "", `--log-level "": want debug, info, warn or error`},
	}
	for _, tt := range tests {
		if _, err := New(&bytes.Buffer{}, tt.format, tt.level); err == nil || err.Error() != tt.want {
			t.Errorf("New(%q, %q): %v, want %q", tt.format, tt.level, err, tt.want)
		}
		o := Options{Format: tt.format, Level: tt.level}
		if err := o.Check(); err == nil || err.Error() != tt.want {
			t.Errorf("Check(%+v): %v, want %q", o, err, tt.want)
		}
	}
}

// TestFlags: both flag packages the binaries use take the two flags, with
// the caller's default format and info.
func TestFlags(t *testing.T) {
	gfs := flag.NewFlagSet("x", flag.ContinueOnError)
	g := Flags(gfs, JSON)
	pfs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	p := Flags(pfs, Text)
	if *g != (Options{JSON, "info"}) || *p != (Options{Text, "info"}) || g.Check() != nil || p.Check() != nil {
		t.Fatalf("defaults: %+v %+v", g, p)
	}
	if err := gfs.Parse([]string{"--log-format", "text", "--log-level", "debug"}); err != nil {
		t.Fatal(err)
	}
	if err := pfs.Parse([]string{"--log-format=json", "--log-level=warn"}); err != nil {
		t.Fatal(err)
	}
	if *g != (Options{Text, "debug"}) || *p != (Options{JSON, "warn"}) {
		t.Fatalf("parsed: %+v %+v", g, p)
	}
}
