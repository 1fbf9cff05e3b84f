package cmdline

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/internal/version"
)

func TestExecute(t *testing.T) {
	errFailed := errors.New("failed")
	errRefused := errors.New("refused")
	newRoot := func() *cobra.Command {
		var name string
		root := &cobra.Command{Use: "tool"}
		sub := &cobra.Command{
			Use:  "sub",
			Args: cobra.NoArgs,
			PreRunE: func(*cobra.Command, []string) error {
				if name == "refused" {
					return errRefused
				}
				return nil
			},
			RunE: func(*cobra.Command, []string) error {
				if name == "fail" {
					return errFailed
				}
				return nil
			},
		}
		sub.Flags().StringVar(&name, "name", "", "")
		_ = sub.MarkFlagRequired("name")
		root.AddCommand(sub)
		return root
	}
	tests := []struct {
		name      string
		args      []string
		usage     bool
		err       error
		errString string
		stdout    string
	}{
		{name: "ok", args: []string{"sub", "--name", "x"}},
		{name: "failure in RunE", args: []string{"sub", "--name", "fail"}, err: errFailed},
		{name: "unknown flag", args: []string{"sub", "--bogus"}, usage: true, errString: "unknown flag: --bogus"},
		{name: "unknown command", args: []string{"bogus"}, usage: true, errString: `unknown command "bogus" for "tool"`},
		{name: "stray argument", args: []string{"sub", "--name", "x", "y"}, usage: true, errString: `unknown command "y" for "tool sub"`},
		{name: "required flag", args: []string{"sub"}, usage: true, errString: `required flag(s) "name" not set`},
		{name: "PreRunE refusal", args: []string{"sub", "--name", "refused"}, usage: true, err: errRefused},
		{name: "version", args: []string{"--version"}, stdout: "tool version " + version.String() + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			usage, err := Execute(t.Context(), newRoot(), tt.args, &stdout, &stderr)
			if usage != tt.usage {
				t.Errorf("usage = %v, want %v (err %v)", usage, tt.usage, err)
			}
			switch {
			case tt.err != nil && !errors.Is(err, tt.err), tt.errString != "" && (err == nil || err.Error() != tt.errString),
				tt.err == nil && tt.errString == "" && err != nil:
				t.Errorf("err = %v, want %v%s", err, tt.err, tt.errString)
			}
			if stdout.String() != tt.stdout || stderr.Len() != 0 {
				t.Errorf("stdout %q, want %q; stderr %q, want nothing (the caller prints the error)", stdout.String(), tt.stdout, stderr.String())
			}
		})
	}
}

func TestJSONOutput(t *testing.T) {
	newRoot := func() *cobra.Command {
		var output, name string
		root := &cobra.Command{Use: "tool"}
		root.PersistentFlags().StringVarP(&output, "output", "o", "text", "")
		sub := &cobra.Command{Use: "sub", RunE: func(*cobra.Command, []string) error { return errors.New("failed") }}
		sub.Flags().StringVar(&name, "name", "", "")
		root.AddCommand(sub)
		return root
	}
	tests := []struct {
		args []string
		want bool
	}{
		{[]string{"sub"}, false},
		{[]string{"-o", "json", "sub"}, true},
		{[]string{"sub", "--output=json"}, true},
		{[]string{"sub", "-ojson"}, true},
		{[]string{"-o", "text", "sub"}, false},
		{[]string{"sub", "--name", "-o"}, false}, // parsed: -o is the value of --name
		// Parsing stops at the mistake; the raw args still say json.
		{[]string{"sub", "--bogus", "-o", "json"}, true},
		{[]string{"bogus", "-o", "json"}, true},
		{[]string{"sub", "--bogus", "--", "-o", "json"}, false},
	}
	for _, tt := range tests {
		root := newRoot()
		_, _ = Execute(t.Context(), root, tt.args, io.Discard, io.Discard)
		if got := JSONOutput(root, tt.args); got != tt.want {
			t.Errorf("JSONOutput(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
}

func TestPrintError(t *testing.T) {
	errFailed := errors.New("failed")
	tests := []struct {
		name           string
		asJSON         bool
		err            error
		hints          []string
		stdout, stderr string
	}{
		{name: "text", err: errFailed, hints: []string{"do this", "", "run 'tool --help' for usage"},
			stderr: "tool: failed\n  do this\n  run 'tool --help' for usage\n"},
		{name: "json", asJSON: true, err: errFailed, hints: []string{"do this", "", "run 'tool --help' for usage"},
			stdout: "{\n  \"error\": \"failed\",\n  \"hint\": \"do this; run 'tool --help' for usage\"\n}\n"},
		{name: "json without hint", asJSON: true, err: errFailed, hints: []string{""},
			stdout: "{\n  \"error\": \"failed\"\n}\n"},
		{name: "reported json", asJSON: true, err: Reported(errFailed)},
		{name: "reported text", err: Reported(errFailed), stderr: "tool: failed\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			PrintError(&stdout, &stderr, tt.asJSON, "tool", tt.err, tt.hints...)
			if stdout.String() != tt.stdout || stderr.String() != tt.stderr {
				t.Errorf("stdout %q, stderr %q; want %q, %q", stdout.String(), stderr.String(), tt.stdout, tt.stderr)
			}
		})
	}
	if !errors.Is(Reported(errFailed), errFailed) {
		t.Error("Reported(err) does not wrap err")
	}
}
