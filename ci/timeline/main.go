// Command timeline prints where the time of a confidential pod start goes,
// from the shim's "pod start timeline" line in containerd's log and the
// KBS audit, and the medians of repeated runs for the bench.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cloak-containers/cloak/api/adminapi"
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

const usage = `timeline prints where the time of a Cloak pod start goes.

Usage:
  timeline show --log FILE [--audit FILE] [--container ID] [--output text|json|tsv] [--label L]
  timeline median [--output text|json] [FILE.tsv ...]

show reads the shim's "pod start timeline" line of a container from
containerd's log (the newest one unless --container names an ID or a prefix of
one) and prints its phases from the VM request to the container start. With
--audit (the output of kbsctl -o json audit), the KBS's attestation and key
release decisions made during the image pull become rows too. --output tsv
prints LABEL<TAB>PHASE<TAB>STEP_SECONDS lines and a "total" line for median.

median reads LABEL<TAB>NAME<TAB>SECONDS lines (from the files, else stdin) and
prints, per label, the median [min-max] of each name.

Examples:
  timeline show --log /var/log/containerd.log
  kbsctl -o json audit --limit 1000 > audit.json
  timeline show --log containerd.log --audit audit.json --container 4f1c2d3e
  timeline show --log containerd.log --output json | jq '.phases[] | select(.name=="layers")'
  for i in 1 2 3 4 5; do ...; timeline show --log containerd.log --output tsv --label cloak >> runs.tsv; done
  timeline median runs.tsv runc.tsv
`

// usageError is a mistake on the command line: exit 2 with the usage.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := dispatch(args, stdin, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "timeline: %v\n\n%s", err, usage)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "timeline: %v\n", err)
		return exitFailure
	}
}

func dispatch(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("name a command: show or median")
	}
	switch args[0] {
	case "show":
		return show(args[1:], stdout, stderr)
	case "median":
		return median(args[1:], stdin, stdout)
	case "help", "-h", "-help", "--help":
		return flag.ErrHelp
	default:
		return usagef("unknown command %q: want show or median", args[0])
	}
}

// newFlags returns a flag set that reports mistakes as usage errors
// instead of printing them itself.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%s: %v", fs.Name(), err)
	}
	return nil
}

func show(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("show")
	logPath := fs.String("log", "", "containerd's log (required)")
	auditPath := fs.String("audit", "", "the output of kbsctl -o json audit (optional)")
	container := fs.String("container", "", "container ID or a prefix of it (default: the newest timeline of the log)")
	output := fs.String("output", "text", "text, json or tsv")
	label := fs.String("label", "cloak", "first column of the tsv output")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usagef("show: unexpected argument %q", fs.Arg(0))
	case *logPath == "":
		return usagef("show: --log FILE is required (containerd's log)")
	case *output != "text" && *output != "json" && *output != "tsv":
		return usagef("show: --output %q: want text, json or tsv", *output)
	case *output == "tsv" && (*label == "" || strings.ContainsAny(*label, "\t\n")):
		return usagef("show: --label %q: want a non-empty label without tabs or newlines", *label)
	}

	f, err := os.Open(*logPath)
	if err != nil {
		return err
	}
	starts, skipped, err := readTimelines(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", *logPath, err)
	}
	if skipped > 0 {
		fmt.Fprintf(stderr, "timeline: %s: skipped %d lines longer than %d KiB\n", *logPath, skipped, maxLineBytes>>10)
	}
	p, err := pickTimeline(starts, *container)
	if err != nil {
		return fmt.Errorf("%s: %w", *logPath, err)
	}
	var audit []adminapi.AuditEntry
	if *auditPath != "" {
		f, err := os.Open(*auditPath)
		if err != nil {
			return err
		}
		audit, err = readAudit(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", *auditPath, err)
		}
	}
	tl := buildTimeline(p, audit)
	for _, problem := range tl.problems {
		fmt.Fprintf(stderr, "timeline: %s:%d: %s; that phase is left out\n", *logPath, p.line, problem)
	}
	if len(tl.Phases) == 0 {
		return fmt.Errorf("%s:%d: the timeline line of container %s has no phase times", *logPath, p.line, shortID(tl.Container))
	}
	switch *output {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(tl)
	case "tsv":
		return writeTSV(stdout, tl, *label)
	}
	return writeText(stdout, tl)
}

func median(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := newFlags("median")
	output := fs.String("output", "text", "text or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *output != "text" && *output != "json" {
		return usagef("median: --output %q: want text or json", *output)
	}
	s := newSamples()
	if fs.NArg() == 0 {
		if err := s.read(stdin, "stdin"); err != nil {
			return err
		}
	}
	for _, path := range fs.Args() {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		err = s.read(f, path)
		f.Close()
		if err != nil {
			return err
		}
	}
	if len(s.labels) == 0 {
		return errors.New("no LABEL<TAB>NAME<TAB>SECONDS lines in the input: give the files that timeline show --output tsv wrote")
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Labels []labelStats `json:"labels"`
		}{s.stats()})
	}
	return writeMedianText(stdout, s)
}

// writeText prints the timeline for humans.
func writeText(w io.Writer, tl timeline) error {
	var about []string
	if tl.Sandbox != "" {
		about = append(about, "pod "+shortID(tl.Sandbox))
	}
	if tl.Tee != "" {
		about = append(about, tl.Tee)
	}
	if tl.Image != "" {
		img := "image " + tl.Image
		if tl.Encrypted {
			img = "encrypted " + img
		}
		about = append(about, img)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Pod start timeline: container %s", shortID(tl.Container))
	if len(about) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(about, ", "))
	}
	fmt.Fprintf(&b, "\n%9s %9s  %s\n", "at (s)", "step (s)", "phase")
	for _, ph := range tl.Phases {
		fmt.Fprintf(&b, "%9.3f %9.3f  %s\n", ph.At, ph.Step, ph.Detail)
	}
	fmt.Fprintf(&b, "total %.3f s\n", tl.Total)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeTSV prints the steps of the timeline for median.
func writeTSV(w io.Writer, tl timeline, label string) error {
	var b strings.Builder
	for _, ph := range tl.Phases {
		fmt.Fprintf(&b, "%s\t%s\t%.6f\n", label, ph.Name, ph.Step)
	}
	fmt.Fprintf(&b, "%s\ttotal\t%.6f\n", label, tl.Total)
	_, err := io.WriteString(w, b.String())
	return err
}
