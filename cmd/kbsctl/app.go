package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/internal/cmdline"
	"github.com/cloak-containers/cloak/kbs/adminclient"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the KBS said no, or could not be reached
	exitUsage   = 2 // the command line is wrong
)

// app holds the global flags and the process's streams.
type app struct {
	getenv         func(string) string
	stdin          io.Reader
	stdout, stderr io.Writer

	url, adminKey, cacert, output, role string
	timeout                             time.Duration
	poll                                time.Duration // audit --follow interval
}

func newApp(getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) *app {
	return &app{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr, poll: time.Second}
}

// usageError marks a mistake on the command line (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func (a *app) execute(ctx context.Context, args []string) int {
	root := a.rootCmd()
	root.SetIn(a.stdin)
	usage, err := cmdline.Execute(ctx, root, args, a.stdout, a.stderr)
	if err == nil {
		return exitOK
	}
	usage = usage || errors.As(err, new(usageError))
	hints := []string{a.hint(err)}
	if usage {
		hints = append(hints, cmdline.UsageHint(root))
	}
	cmdline.PrintError(a.stdout, a.stderr, cmdline.JSONOutput(root, args), "kbsctl", err, hints...)
	if usage {
		return exitUsage
	}
	return exitFailure
}

// hint says what to do about the common failures.
func (a *app) hint(err error) string {
	var kbsErr *adminclient.Error
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var netErr *net.OpError
	switch {
	case errors.As(err, &kbsErr) && kbsErr.Problem.Status == 401:
		return "admin key not accepted: is the KBS started with --admin-public-key matching it?"
	case errors.As(err, &kbsErr) && kbsErr.Problem.Check == "admin-role":
		return "this needs the admin role: sign with a key the KBS was started with as --admin-public-key (an --auditor-public-key may only read) and leave out --role"
	case errors.As(err, &unknownCA):
		return "the KBS certificate is not trusted: pass --cacert DATA_DIR/tls/cert.pem"
	case errors.As(err, &hostErr):
		return "the KBS certificate does not name this host: use the address in the certificate (127.0.0.1 for a local KBS)"
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within --timeout %s: is the KBS overloaded or the address wrong?", a.timeout)
	case errors.Is(err, syscall.ECONNREFUSED), errors.As(err, &netErr) && netErr.Op == "dial":
		return fmt.Sprintf("KBS unreachable at %s: is it running, and is --url (or KBS_URL) right?", a.url)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return "the server at --url speaks plain HTTP; is this really the KBS?"
	}
	return ""
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "kbsctl",
		Short: "Administer a Cloak Key Broker Service",
		Long: `kbsctl administers a Cloak Key Broker Service (KBS): the secrets it releases to
attested guests, the policies that decide, the reference values those policies
compare evidence with, and the audit log that explains every decision.

Every request is signed with an Ed25519 admin key (kbsctl keygen) whose public
half the KBS was started with (--admin-public-key).`,
		Example: `  kbsctl keygen --private-key admin.key --public-key admin.pub
  export KBS_URL=https://127.0.0.1:8080 KBSCTL_ADMIN_KEY=admin.key
  kbsctl --cacert /var/lib/cloak-kbs/tls/cert.pem resource list`,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if a.output == "yaml" && cmd.Annotations[yamlAnnotation] == "" {
				return usagef("--output \"yaml\": only kbsctl secret seal writes yaml; want text or json")
			}
			if a.output != "text" && a.output != "json" && a.output != "yaml" {
				return usagef("--output %q: want text or json", a.output)
			}
			if a.timeout <= 0 {
				return usagef("--timeout must be positive")
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.url, "url", a.getenv("KBS_URL"), "KBS base URL, e.g. https://127.0.0.1:8080 (env KBS_URL)")
	pf.StringVar(&a.adminKey, "admin-key", a.getenv("KBSCTL_ADMIN_KEY"), "Ed25519 admin private key PEM (env KBSCTL_ADMIN_KEY)")
	pf.StringVar(&a.cacert, "cacert", "", "PEM CA certificate to trust for the KBS (e.g. DATA_DIR/tls/cert.pem)")
	pf.StringVar(&a.role, "role", "", "narrow the token to this role (auditor); default: none, the KBS grants the role of the key (--admin-public-key or --auditor-public-key)")
	pf.StringVarP(&a.output, "output", "o", "text", "output format: text or json (secret seal: also yaml)")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "time limit for each request to the KBS")

	root.AddCommand(a.keygenCmd(), a.resourceCmd(), a.resourcePolicyCmd(), a.attestationPolicyCmd(),
		a.referenceValueCmd(), a.auditCmd(), a.keyproviderCmd(), a.tokenCmd(), a.evidenceCmd(), a.imageCmd(), a.secretCmd())
	return root
}

// client builds an admin client from the global flags.
func (a *app) client() (*adminclient.Client, error) {
	if a.url == "" {
		return nil, usagef("no KBS URL: pass --url https://HOST:PORT or set KBS_URL")
	}
	if a.adminKey == "" {
		return nil, usagef("no admin key: pass --admin-key FILE or set KBSCTL_ADMIN_KEY (create one with kbsctl keygen)")
	}
	key, err := adminclient.LoadPrivateKey(a.adminKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (create a key pair with kbsctl keygen)", err)
	} else if err != nil {
		return nil, err
	}
	opts := []adminclient.Option{adminclient.WithRole(a.role)}
	if a.cacert != "" {
		pem, err := os.ReadFile(a.cacert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return nil, usagef("--cacert %s holds no PEM certificate; pass the KBS's DATA_DIR/tls/cert.pem", a.cacert)
		}
		opts = append(opts, adminclient.WithCACert(pem))
	}
	c, err := adminclient.New(a.url, key, opts...)
	if err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

// call runs fn with a client and a context bounded by --timeout.
func (a *app) call(cmd *cobra.Command, fn func(context.Context, *adminclient.Client) error) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	defer cancel()
	return fn(ctx, c)
}

// emit prints v as JSON, or calls text for the text format.
func (a *app) emit(v any, text func(io.Writer)) error {
	if a.output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(a.stdout)
	return nil
}

// readInput reads a --file argument ("-" is stdin), refusing more than limit bytes.
func (a *app) readInput(name string, limit int) ([]byte, error) {
	if name == "" {
		return nil, usagef("--file is required (use --file - to read standard input)")
	}
	var r io.Reader = a.stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("--file: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes, the most the KBS accepts", name, limit)
	}
	return data, nil
}

// groupCmd is a command that only holds subcommands. Cobra would print help
// and succeed for "kbsctl resource frob"; this makes that a usage error.
func groupCmd(use, short, long, example string) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Long: long, Example: example,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
}
