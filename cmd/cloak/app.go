package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/agentpolicy/generate"
	"github.com/cloak-containers/cloak/internal/cmdline"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the input was refused, or an image could not be resolved
	exitUsage   = 2 // the command line is wrong
)

type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *app {
	return &app{stdin: stdin, stdout: stdout, stderr: stderr}
}

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
	hint := ""
	var ge *generate.Error
	if errors.As(err, &ge) {
		hint = ge.Hint
	} else if usage {
		hint = "run 'cloak generate --help' for usage"
	}
	cmdline.PrintError(a.stdout, a.stderr, cmdline.JSONOutput(root, args), "cloak", err, hint)
	if usage {
		return exitUsage
	}
	return exitFailure
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "cloak",
		Short: "Make Kubernetes pods confidential Cloak pods",
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.generateCmd())
	return root
}

type generateFlags struct {
	output, outputFile, namespace, runtimeClass, kbsURL, kbsCA, crictlDir string
	mirrors, insecure                                                     []string
	allowExec                                                             bool
}

func (a *app) generateCmd() *cobra.Command {
	var f generateFlags
	cmd := &cobra.Command{
		Use:   "generate [FILE|-]",
		Short: "Add an agent policy and the Cloak runtime class to each pod of Kubernetes YAML",
		Long: `generate reads Kubernetes YAML (Pod, Deployment, StatefulSet, DaemonSet,
ReplicaSet, Job, CronJob; other kinds pass through unchanged) and writes it
back with, on each pod template:

  - annotation io.cloak.initdata: the pod's initdata (base64 of gzipped TOML)
    holding the KBS the guest attests to (aa.toml) and the agent policy
    (policy.rego) that pins what the host may ask the guest to run: each
    container's image digest, argv, env, user, groups, capabilities, mounts,
    sysctls and the exec probes/hooks kubelet may run;
  - spec.runtimeClassName (--runtime-class, where the pod names none).

Image tags are resolved to their linux/amd64 manifest digests now, through
the registry (credentials from ~/.docker/config.json): pushing a new image
under the same tag later makes the guest refuse it until you generate again.

For each pod it prints the initdata digest (sha384) on stderr: store it in
the KBS as the init_data reference value, or the guest gets no secrets:

  kbsctl reference-value set init_data <digest>`,
		Example: `  # Generate, then apply
  cloak generate --kbs-url https://kbs.example:8080 --kbs-ca kbs-cert.pem app.yaml -w app.cloak.yaml
  kubectl apply -f app.cloak.yaml

  # From stdin, a local plain-HTTP registry, a JSON summary on stdout
  helm template ./chart | cloak generate --kbs-url https://10.0.2.2:8080 \
    --insecure-registry registry.local:5000 -o json -w out.yaml -

  # Pull through a mirror, and write crictl configs for the first pod
  cloak generate --kbs-url https://10.0.2.2:8080 --mirror docker.io=http://10.0.0.1:5000 \
    --crictl ./cri pod.yaml >/dev/null`,
		Args: cobra.MaximumNArgs(1),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if f.output != "text" && f.output != "json" {
				return usagef("--output %q: want text or json", f.output)
			}
			if f.kbsURL == "" {
				return usagef("--kbs-url is required: the KBS the pods' guests attest to, e.g. https://10.0.2.2:8080")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			resolver, err := generate.NewRegistryResolver(f.mirrors, f.insecure)
			if err != nil {
				return usageError{err}
			}
			opts := generate.Options{
				Namespace:            f.namespace,
				RuntimeClass:         f.runtimeClass,
				OverrideRuntimeClass: cmd.Flags().Changed("runtime-class"),
				KBSURL:               f.kbsURL,
				AllowExec:            f.allowExec,
				Resolver:             resolver,
			}
			if f.kbsCA != "" {
				if opts.KBSCert, err = readBounded(f.kbsCA, 64<<10); err != nil {
					return usagef("--kbs-ca: %v", err)
				}
			}
			in, err := a.readInput(args)
			if err != nil {
				return usageError{err}
			}
			res, err := generate.Generate(cmd.Context(), in, opts)
			if err != nil {
				return err
			}
			if f.outputFile != "" {
				if err := os.WriteFile(f.outputFile, res.YAML, 0o644); err != nil {
					return err
				}
			} else if f.output == "text" {
				a.stdout.Write(res.YAML)
			}
			if f.crictlDir != "" && len(res.Pods) > 0 {
				if err := generate.WriteCrictl(f.crictlDir, res.Pods[0]); err != nil {
					return err
				}
			}
			return a.report(res, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.outputFile, "output-file", "w", "", "write the YAML to this file instead of stdout")
	fl.StringVarP(&f.output, "output", "o", "text", "text: YAML on stdout (unless -w), digests on stderr; json: a JSON summary on stdout")
	fl.StringVar(&f.kbsURL, "kbs-url", "", "URL of the KBS the guests attest to (required), e.g. https://10.0.2.2:8080")
	fl.StringVar(&f.kbsCA, "kbs-ca", "", "PEM certificate the guests trust the KBS by (the KBS's tls/cert.pem)")
	fl.StringVarP(&f.namespace, "namespace", "n", "default", "namespace of objects that name none")
	fl.StringVar(&f.runtimeClass, "runtime-class", generate.DefaultRuntimeClass, "runtime class for pods that name none; given explicitly, it replaces theirs too (cloak-snp, cloak-tdx on hardware)")
	fl.StringArrayVar(&f.mirrors, "mirror", nil, "resolve images of registry HOST at ENDPOINT instead: HOST=ENDPOINT, e.g. 127.0.0.1:5000=http://10.0.0.1:5000 (repeatable)")
	fl.StringArrayVar(&f.insecure, "insecure-registry", nil, "speak plain HTTP to registry HOST:PORT (repeatable)")
	fl.BoolVar(&f.allowExec, "allow-exec", false, "DEBUG ONLY: let the host exec any command in every container (kubectl exec); the host can then read everything the pod holds")
	fl.StringVar(&f.crictlDir, "crictl", "", "also write the first pod's CRI configs for crictl (pod.json, container-NAME.json) into this directory")
	return cmd
}

func (a *app) readInput(args []string) ([]byte, error) {
	if len(args) == 0 || args[0] == "-" {
		b, err := io.ReadAll(io.LimitReader(a.stdin, generate.MaxInputSize+1))
		if err != nil {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
		return b, nil
	}
	return readBounded(args[0], generate.MaxInputSize+1)
}

// readBounded reads at most limit bytes; more is left to the caller's size
// check (generate refuses input over its limit with a clear message).
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

type summaryPod struct {
	Kind          string         `json:"kind"`
	Name          string         `json:"name"`
	Namespace     string         `json:"namespace"`
	NamePattern   string         `json:"name_pattern"`
	RuntimeClass  string         `json:"runtime_class"`
	InitdataAlg   string         `json:"initdata_algorithm"`
	InitdataHex   string         `json:"initdata_digest"`
	InitdataBytes int            `json:"initdata_bytes"`
	AllowExec     bool           `json:"allow_exec"`
	Images        []summaryImage `json:"images"`
}

type summaryImage struct {
	Container string `json:"container"`
	Image     string `json:"image"`
	Digest    string `json:"digest"`
}

func (a *app) report(res *generate.Result, f generateFlags) error {
	var pods []summaryPod
	for _, p := range res.Pods {
		sp := summaryPod{Kind: p.Kind, Name: p.Name, Namespace: p.Namespace, NamePattern: p.Data.Sandbox.Name,
			RuntimeClass: p.RuntimeClass, InitdataAlg: "sha384", InitdataHex: hex.EncodeToString(p.Digest),
			InitdataBytes: len(p.Initdata), AllowExec: f.allowExec, Images: []summaryImage{}}
		for _, c := range p.Data.Containers {
			sp.Images = append(sp.Images, summaryImage{c.Name, c.Image, c.ImageDigest})
		}
		pods = append(pods, sp)
	}
	if f.output == "json" {
		out := struct {
			Pods     []summaryPod `json:"pods"`
			Warnings []string     `json:"warnings"`
			Hint     string       `json:"hint"`
		}{pods, res.Warnings, "store each initdata_digest in the KBS: kbsctl reference-value set init_data <digest>"}
		if out.Pods == nil {
			out.Pods = []summaryPod{}
		}
		if out.Warnings == nil {
			out.Warnings = []string{}
		}
		enc := json.NewEncoder(a.stdout)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(a.stderr, "cloak: warning: %s\n", w)
	}
	if len(pods) == 0 {
		fmt.Fprintln(a.stderr, "cloak: no pods in the input: nothing was changed")
		return nil
	}
	for _, p := range pods {
		fmt.Fprintf(a.stderr, "%s %s/%s (pod names %s): initdata sha384 %s\n", p.Kind, p.Namespace, p.Name, p.NamePattern, p.InitdataHex)
		for _, im := range p.Images {
			fmt.Fprintf(a.stderr, "  %s: %s@%s\n", im.Container, im.Image, im.Digest)
		}
	}
	if f.allowExec {
		fmt.Fprintln(a.stderr, "cloak: warning: --allow-exec lets the host run any command in these pods: for debugging only")
	}
	fmt.Fprintln(a.stderr, "store each digest as the KBS's init_data reference value: kbsctl reference-value set init_data <digest>")
	return nil
}
