package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kbs.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadFlags parses args as the kbs command line and completes it from the
// config file at path, as the start does; it returns the flags and the
// configFile.
func loadFlags(t *testing.T, path string, args ...string) (*pflag.FlagSet, *configFile, error) {
	t.Helper()
	fs := newCommand().Flags()
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	c := &configFile{path: path}
	return fs, c, c.load(fs)
}

// sample is one value per flag type: how the file writes it and how the
// command line does. A flag of a type missing here fails
// TestEveryFlagHasAConfigKey, so a new kind of flag is looked at.
var samples = map[string]struct {
	toml string
	args func(name string) []string
}{
	"string":      {`"sample"`, func(n string) []string { return []string{"--" + n, "sample"} }},
	"bool":        {`true`, func(n string) []string { return []string{"--" + n + "=true"} }},
	"duration":    {`"7m30s"`, func(n string) []string { return []string{"--" + n, "7m30s"} }},
	"int":         {`42`, func(n string) []string { return []string{"--" + n, "42"} }},
	"int64":       {`42`, func(n string) []string { return []string{"--" + n, "42"} }},
	"uint":        {`42`, func(n string) []string { return []string{"--" + n, "42"} }},
	"float64":     {`2.5`, func(n string) []string { return []string{"--" + n, "2.5"} }},
	"stringArray": {`["one", "two,three"]`, func(n string) []string { return []string{"--" + n, "one", "--" + n, "two,three"} }},
	"stringSlice": {`["one", "two"]`, func(n string) []string { return []string{"--" + n, "one,two"} }},
}

// TestEveryFlagHasAConfigKey: each kbs flag (but --config, --help,
// --version) has a config-file key, its long name, and the key gives the
// flag the value the flag gives on the command line.
func TestEveryFlagHasAConfigKey(t *testing.T) {
	n := 0
	newCommand().Flags().VisitAll(func(f *pflag.Flag) {
		if notSettings[f.Name] {
			return
		}
		n++
		t.Run(f.Name, func(t *testing.T) {
			s, ok := samples[f.Value.Type()]
			if !ok {
				t.Fatalf("flag --%s has type %s, which neither the test nor perhaps setFlag knows: check that a config file can set it (config.go) and add a sample here", f.Name, f.Value.Type())
			}
			fromFile, _, err := loadFlags(t, writeConfig(t, f.Name+" = "+s.toml+"\n"))
			if err != nil {
				t.Fatalf("config %s = %s: %v", f.Name, s.toml, err)
			}
			fromArgs := newCommand().Flags()
			if err := fromArgs.Parse(s.args(f.Name)); err != nil {
				t.Fatal(err)
			}
			got, want := fromFile.Lookup(f.Name), fromArgs.Lookup(f.Name)
			if flagText(got) != flagText(want) || flagText(got) == flagText(f) {
				t.Fatalf("config key %s = %s gives %s; the command line %q gives %s (default %s)", f.Name, s.toml, flagText(got), s.args(f.Name), flagText(want), flagText(f))
			}
			if !got.Changed {
				t.Fatal("the flag set from the file is not marked changed: required flags and flag groups would not see it")
			}
		})
	})
	if n < 20 {
		t.Fatalf("only %d flags visited", n)
	}
}

// TestConfigMistakes: what a file may get wrong is refused with the key, the
// reason and the way to write it.
func TestConfigMistakes(t *testing.T) {
	tests := []struct{ name, text, want string }{
		{"underscore", "admin_public_key = [\"a.pub\"]\n", `unknown key "admin_public_key"; did you mean "admin-public-key"?`},
		{"typo", "listn = \"127.0.0.1:1\"\n", `unknown key "listn"; did you mean "listen"?`},
		{"table", "[tls]\ncert = \"a.pem\"\n", `unknown key "tls"; did you mean "tls-`},
		{"the file itself", "config = \"other.toml\"\n", `key "config" is not a setting: --config exists only on the command line`},
		{"help", "help = true\n", `key "help" is not a setting`},
		{"scalar for a repeatable flag", "admin-public-key = \"a.pub\"\n", `key "admin-public-key": "a.pub" is not a list; the flag is repeatable: write admin-public-key = ["a.pub"]`},
		{"list for a scalar", "listen = [\"a\"]\n", `key "listen": a list is not a string: write it in quotes`},
		{"number for a duration", "session-ttl = 300\n", `key "session-ttl": 300 is not a string: write it in quotes, like "5m"`},
		{"bad duration", "token-ttl = \"5 minutes\"\n", `key "token-ttl": "5 minutes": must be a duration like "30s" or "5m"`},
		{"string for a bool", "insecure-http = \"yes\"\n", `key "insecure-http": "yes" is not true or false`},
		{"number in a list", "tls-san = [\"a\", 7]\n", `key "tls-san": item 2: 7 is not a string`},
		{"date", "listen = 2026-12-06\n", `key "listen": the toml.LocalDate 2026-12-06 is not a string`},
		{"syntax", "listen = \n", "line 1, column 10: "},
		{"duplicate key", "listen = \"a\"\nlisten = \"b\"\n", "line 2"},
		{"several mistakes", "listn = \"a\"\nsession-ttl = 1\n", "2 mistakes:\n  unknown key \"listn\"; did you mean \"listen\"? (the keys are the long flag names of kbs --help)\n  key \"session-ttl\": 1 is not a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.text)
			_, _, err := loadFlags(t, path)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "--config "+path+": ") {
				t.Fatalf("load: %v\nwant --config %s: ...%s...", err, path, tt.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "none.toml")
		if _, _, err := loadFlags(t, path); err == nil || !strings.Contains(err.Error(), "--config: open "+path+": no such file") {
			t.Fatalf("load: %v", err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		path := writeConfig(t, "# "+strings.Repeat("x", maxConfigSize)+"\n")
		if _, _, err := loadFlags(t, path); err == nil || !strings.Contains(err.Error(), "larger than 1048576 bytes") {
			t.Fatalf("load: %v", err)
		}
	})
}

// TestCommandLineWins: a flag on the command line wins over the file, a list
// included (the two are not merged), and the file fills in the rest.
func TestCommandLineWins(t *testing.T) {
	path := writeConfig(t, `
listen = "10.0.0.1:8443"
admin-public-key = ["file.pub"]
session-ttl = "7m"
insecure-http = true
`)
	fs, c, err := loadFlags(t, path, "--listen", "127.0.0.1:0", "--admin-public-key", "cli.pub", "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	admin, _ := fs.GetStringArray("admin-public-key")
	listen, _ := fs.GetString("listen")
	ttl, _ := fs.GetDuration("session-ttl")
	insecure, _ := fs.GetBool("insecure-http")
	if listen != "127.0.0.1:0" || !slices.Equal(admin, []string{"cli.pub"}) || ttl.String() != "7m0s" || !insecure {
		t.Fatalf("listen %q admin %q session-ttl %s insecure-http %v", listen, admin, ttl, insecure)
	}
	if !slices.Equal(c.overridden, []string{"admin-public-key", "listen"}) {
		t.Fatalf("overridden %q", c.overridden)
	}
}

// TestConfigThroughTheCommand: the file's values reach the start (the
// required --data-dir, a value run refuses) and its mistakes are command-line
// mistakes, exit 2 with the usage hint.
func TestConfigThroughTheCommand(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, text string
		args       []string
		code       int
		want       string
	}{
		{"data-dir from the file", fmt.Sprintf("data-dir = %q\nsnp-crl = \"sometimes\"\n", dir), nil, 1, "kbs: --snp-crl: "},
		{"command line wins", fmt.Sprintf("data-dir = %q\nsnp-crl = \"sometimes\"\n", dir), []string{"--snp-crl", "often"}, 1, `kbs: --snp-crl: `},
		{"unknown key", "data_dir = \"x\"\n", nil, 2, "kbs: --config CONFIG: unknown key \"data_dir\"; did you mean \"data-dir\"? (the keys are the long flag names of kbs --help)\n  run 'kbs --help' for usage"},
		{"file without data-dir", "listen = \"127.0.0.1:0\"\n", nil, 2, `required flag(s) "data-dir" not set`},
		{"tls-cert without key from the file", fmt.Sprintf("data-dir = %q\ntls-cert = \"a.pem\"\n", dir), nil, 2, "--tls-cert needs --tls-key"},
		{"exclusive flags across file and command line", fmt.Sprintf("data-dir = %q\ninsecure-http = true\n", dir), []string{"--tls-cert", "a.pem", "--tls-key", "a.key"}, 2, "[insecure-http tls-cert] were all set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.text)
			var stderr bytes.Buffer
			code := execute(t.Context(), append([]string{"--config", path, "--log-level", "error"}, tt.args...), &bytes.Buffer{}, &stderr)
			want := strings.ReplaceAll(tt.want, "CONFIG", path)
			if code != tt.code || !strings.Contains(stderr.String(), want) {
				t.Fatalf("exit %d, want %d; stderr %q, want it to contain %q", code, tt.code, stderr.String(), want)
			}
			if tt.name == "command line wins" && !strings.Contains(stderr.String(), strconv.Quote("often")) {
				t.Fatalf("the file's value was used: %q", stderr.String())
			}
		})
	}
}

// FuzzConfig: any bytes either load or are refused with an error; nothing
// panics, and what loads sets only real flags.
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		"listen = \"127.0.0.1:0\"\nadmin-public-key = [\"a.pub\"]\n",
		"session-ttl = \"5m\"\ninsecure-http = true\n",
		"[tls]\nx = 1\n", "a = [[1], {b = 2}]\n", "listen = 1979-05-27T07:32:00Z\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		settings, err := parseConfig(data)
		if err != nil {
			return
		}
		fs := newCommand().Flags()
		if _, err := applySettings(fs, settings, nil); err == nil {
			for key := range settings {
				if fs.Lookup(key) == nil || notSettings[key] {
					t.Fatalf("key %q accepted", key)
				}
			}
		}
	})
}
