// Command cloak-aa is Cloak's attestation agent: it proves the guest's TEE
// evidence to a Key Broker Service and fetches secrets released to it. It
// runs inside the confidential guest.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/detect"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
	"github.com/cloak-containers/cloak/attestation-agent/service"
	"github.com/cloak-containers/cloak/internal/cmdline"
	"github.com/cloak-containers/cloak/internal/logging"
)

// maxInitData bounds the initdata file: it travels in the attestation body.
const maxInitData = 1 << 20

const defaultSocket = "/run/cloak-aa/aa.sock"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the flags shared by the subcommands.
type options struct {
	kbsURL, kbsCert, initData, tee, sampleSVN, output, socket string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	root := &cobra.Command{
		Use:   "cloak-aa",
		Short: "Cloak attestation agent: attest this guest to a KBS and fetch released secrets",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if o.output != "text" && o.output != "json" {
				return fmt.Errorf("--output %q: want text or json", o.output)
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&o.tee, "tee", kbstypes.TeeSample, "TEE to produce evidence for ("+strings.Join(detect.Names(), ", ")+")")
	pf.StringVar(&o.sampleSVN, "sample-svn", "", "svn reported by the sample TEE (default 1)")
	pf.StringVarP(&o.output, "output", "o", "text", "output format: text or json")

	kbsFlags := func(c *cobra.Command) {
		c.Flags().StringVar(&o.kbsURL, "kbs", "", "KBS base URL, e.g. https://10.0.2.2:8080 (required)")
		c.Flags().StringVar(&o.kbsCert, "kbs-cert", "", "PEM file with the KBS certificate or its CA (default: system roots)")
		c.Flags().StringVar(&o.initData, "initdata", "", "initdata TOML file to send with the evidence")
		_ = c.MarkFlagRequired("kbs")
	}

	getResource := &cobra.Command{
		Use:   "get-resource --kbs URL kbs:///REPO/TYPE/TAG",
		Short: "Attest and print a KBS resource's plaintext (raw bytes) to stdout",
		Example: `  cloak-aa get-resource --kbs https://10.0.2.2:8080 --kbs-cert kbs.pem kbs:///default/key/1 > key.bin
  cloak-aa get-resource --kbs https://10.0.2.2:8080 -o json default/key/1`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			path, err := parseResource(args[0])
			if err != nil {
				return err
			}
			client, err := newClient(o)
			if err != nil {
				return err
			}
			val, err := client.GetResource(ctx, path)
			if err != nil {
				return err
			}
			if o.output == "json" {
				return writeJSON(stdout, map[string]string{"resource": path.String(), "value": base64.StdEncoding.EncodeToString(val)})
			}
			_, err = stdout.Write(val)
			return err
		},
	}
	kbsFlags(getResource)

	getToken := &cobra.Command{
		Use:   "get-token --kbs URL",
		Short: "Attest and print the KBS's attestation token (EAR JWT)",
		Example: `  cloak-aa get-token --kbs https://10.0.2.2:8080 --kbs-cert kbs.pem
  cloak-aa get-token --kbs https://10.0.2.2:8080 --initdata initdata.toml -o json   # token and its (unverified) claims`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			client, err := newClient(o)
			if err != nil {
				return err
			}
			tok, err := client.Attest(ctx)
			if err != nil {
				return err
			}
			if o.output == "text" {
				_, err = fmt.Fprintln(stdout, tok)
				return err
			}
			var claims map[string]any
			if err := rcar.TokenClaims(tok, &claims); err != nil {
				return err
			}
			return writeJSON(stdout, map[string]any{"token": tok, "claims": claims})
		},
	}
	kbsFlags(getToken)

	var logOpts *logging.Options // set with serve's flags
	serve := &cobra.Command{
		Use:   "serve --kbs URL [--socket PATH]",
		Short: "Serve the ocicrypt keyprovider and the local attestation API on a unix socket until SIGTERM",
		Example: `  cloak-aa serve --kbs https://10.0.2.2:8080 --kbs-cert kbs.pem --initdata /run/cloak/initdata.toml
  # ocicrypt config: {"key-providers":{"attestation-agent":{"grpc":"unix:///run/cloak-aa/aa.sock"}}}`,
		Args: cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			return logOpts.Check()
		},
		RunE: func(c *cobra.Command, _ []string) error {
			client, err := newClient(o)
			if err != nil {
				return err
			}
			log, err := logOpts.New(stderr)
			if err != nil {
				return err
			}
			provider, err := detect.New(o.tee, detect.Options{SampleSVN: o.sampleSVN})
			if err != nil {
				return err
			}
			return service.Serve(ctx, service.Config{
				Socket: o.socket, KBS: client, Provider: provider,
				Logger: log,
			})
		},
	}
	kbsFlags(serve)
	serve.Flags().StringVar(&o.socket, "socket", defaultSocket, "unix socket to serve on (created mode 0600)")
	logOpts = logging.Flags(serve.Flags(), logging.Text)

	evidenceCmd := &cobra.Command{
		Use:   "evidence [--tee NAME]",
		Short: "Print the evidence this guest produces (over an all-zero runtime-data digest)",
		Long: `Evidence prints the evidence this guest produces, as the KBS would receive it. Without
--tee it detects the TEE (order: ` + strings.Join(detect.AutoOrder, ", ") + `) and says on stderr why each
one before the chosen one is not available here.`,
		Example: `  cloak-aa evidence
  cloak-aa evidence --tee snp -o json | jq .evidence.attestation_report.measurement
  cloak-aa evidence --tee sample -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			tee := o.tee
			if !c.Flags().Changed("tee") {
				tee = detect.Auto
			}
			var provider evidence.Provider
			var err error
			if tee == detect.Auto {
				var skipped []string
				provider, skipped, err = detect.Detect(detect.Options{SampleSVN: o.sampleSVN})
				for _, s := range skipped {
					fmt.Fprintf(stderr, "cloak-aa: not %s\n", s)
				}
			} else {
				provider, err = detect.New(tee, detect.Options{SampleSVN: o.sampleSVN})
			}
			if err != nil {
				return err
			}
			// The size of the KBS binding, so sample evidence has its real shape.
			ev, err := provider.Evidence(ctx, make([]byte, kbstypes.RuntimeDataDigestSize))
			if err != nil {
				return err
			}
			if o.output == "json" {
				return writeJSON(stdout, map[string]any{"tee": provider.Tee(), "evidence": ev})
			}
			return writeJSON(stdout, ev)
		},
	}

	root.AddCommand(getResource, getToken, serve, evidenceCmd)
	usage, err := cmdline.Execute(ctx, root, args, stdout, stderr)
	asJSON := cmdline.JSONOutput(root, args)
	switch {
	case err == nil:
		return 0
	case usage:
		cmdline.PrintError(stdout, stderr, asJSON, "cloak-aa", err, cmdline.UsageHint(root))
		return 2
	case asJSON:
		cmdline.PrintError(stdout, stderr, true, "cloak-aa", err, hint(err))
		return 1
	default:
		// One line, so the tail of a guest's console shows the fix with the error.
		msg := err.Error()
		if h := hint(err); h != "" {
			msg += "; " + h
		}
		fmt.Fprintf(stderr, "cloak-aa: %s\n", msg)
		return 1
	}
}

func parseResource(arg string) (kbstypes.ResourcePath, error) {
	if strings.HasPrefix(arg, "kbs://") {
		_, p, err := kbstypes.ParseResourceURI(arg)
		return p, err
	}
	return kbstypes.ParseResourcePath(arg)
}

func newClient(o options) (*rcar.Client, error) {
	provider, err := detect.New(o.tee, detect.Options{SampleSVN: o.sampleSVN})
	if err != nil {
		return nil, err
	}
	cfg := rcar.Config{URL: o.kbsURL, Provider: provider}
	if o.kbsCert != "" {
		if cfg.CACertPEM, err = os.ReadFile(o.kbsCert); err != nil {
			return nil, fmt.Errorf("read --kbs-cert: %w", err)
		}
	}
	if o.initData != "" {
		if cfg.InitData, err = readInitData(o.initData); err != nil {
			return nil, err
		}
	}
	return rcar.New(cfg)
}

func readInitData(path string) (*kbstypes.InitData, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read --initdata: %w", err)
	}
	defer f.Close()
	body, err := io.ReadAll(io.LimitReader(f, maxInitData+1))
	if err != nil {
		return nil, fmt.Errorf("read --initdata: %w", err)
	}
	if len(body) > maxInitData {
		return nil, fmt.Errorf("--initdata %s is larger than %d bytes", path, maxInitData)
	}
	return &kbstypes.InitData{Format: "toml", Body: string(body)}, nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// hint says what to do about errors whose fix is a flag away, or "".
func hint(err error) string {
	var (
		unknownCA x509.UnknownAuthorityError
		certErr   *tls.CertificateVerificationError
		hostErr   x509.HostnameError
		dnsErr    *net.DNSError
	)
	switch {
	case errors.Is(err, rcar.ErrUnreachable):
		return "" // rcar says what to check
	case errors.As(err, &hostErr):
		return "use the host name or IP the KBS certificate was issued for in --kbs"
	case errors.As(err, &unknownCA), errors.As(err, &certErr):
		return "pass the KBS certificate with --kbs-cert"
	case errors.Is(err, syscall.ECONNREFUSED), errors.As(err, &dnsErr), errors.Is(err, os.ErrDeadlineExceeded):
		return "is the KBS running and --kbs right?"
	}
	return ""
}
