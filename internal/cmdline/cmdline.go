// Package cmdline runs a cobra command tree the way Cloak's binaries need:
// --version from internal/version, an error that says whether it is a
// mistake on the command line (so the caller can point to the usage and
// exit 2) or a failure of a command that started, and that error printed
// as text on stderr or, with -o json, as a JSON object on stdout.
package cmdline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/internal/version"
)

// Execute runs root with args and returns its error, with usage set when
// the error came before any command's RunE: an unknown flag or command, a
// missing required flag, a refusal of a PreRunE. Cobra prints neither the
// error nor the usage; the caller prints the error.
func Execute(ctx context.Context, root *cobra.Command, args []string, stdout, stderr io.Writer) (usage bool, err error) {
	ran := false
	markRun(root, &ran)
	root.Version = version.String()
	root.SilenceErrors, root.SilenceUsage = true, true
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err = root.ExecuteContext(ctx)
	return err != nil && !ran, err
}

// markRun wraps the RunE of c and its subcommands so that *ran is set
// once cobra and the PreRunEs accepted the command line.
func markRun(c *cobra.Command, ran *bool) {
	if run := c.RunE; run != nil {
		c.RunE = func(c *cobra.Command, args []string) error {
			*ran = true
			return run(c, args)
		}
	}
	for _, sub := range c.Commands() {
		markRun(sub, ran)
	}
}

// UsageHint is what follows a mistake on root's command line.
func UsageHint(root *cobra.Command) string {
	return "run '" + root.Name() + " --help' for usage"
}

// reported marks an error whose command already printed its -o json result.
type reported struct{ error }

func (r reported) Unwrap() error { return r.error }

// Reported marks err as already told in the JSON result the command printed
// on stdout (a verdict that says invalid, a list of mismatches): with
// -o json, PrintError then prints nothing, so stdout stays one object. The
// text output and the exit code are as for err.
func Reported(err error) error { return reported{err} }

// JSONOutput reports whether args asked root for -o json (or --output
// json). It reads the parsed flag of the command args name, and the raw
// args when parsing stopped before the flag, as it does at a mistake on
// the command line.
func JSONOutput(root *cobra.Command, args []string) bool {
	c, _, err := root.Find(args)
	if err != nil {
		c = root
	}
	if f := c.Flag("output"); f != nil && f.Changed {
		return f.Value.String() == "json"
	}
	for i, a := range args {
		switch {
		case a == "--":
			return false
		case a == "-o" || a == "--output":
			if i+1 < len(args) && args[i+1] == "json" {
				return true
			}
		case a == "-ojson", a == "-o=json", a == "--output=json":
			return true
		}
	}
	return false
}

// PrintError prints the error of a command that failed. With asJSON,
// stdout gets one JSON object, {"error": ..., "hint": ...} with the hints
// joined by "; " (no hint key when there is none), and stderr nothing, so
// that `bin -o json ... | jq` reads a failure as well as a result. Without,
// stderr gets "bin: error" and each hint on its own indented line.
func PrintError(stdout, stderr io.Writer, asJSON bool, bin string, err error, hints ...string) {
	hints = slices.DeleteFunc(hints, func(h string) bool { return h == "" })
	if !asJSON {
		fmt.Fprintf(stderr, "%s: %v\n", bin, err)
		for _, h := range hints {
			fmt.Fprintf(stderr, "  %s\n", h)
		}
		return
	}
	if errors.As(err, new(reported)) {
		return
	}
	b, _ := json.MarshalIndent(struct {
		Error string `json:"error"`
		Hint  string `json:"hint,omitempty"`
	}{err.Error(), strings.Join(hints, "; ")}, "", "  ")
	fmt.Fprintf(stdout, "%s\n", b)
}
