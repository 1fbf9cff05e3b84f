package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/kbs/adminapi"
	"github.com/cloak-containers/cloak/kbs/adminclient"
	"github.com/cloak-containers/cloak/kbstypes"
	"github.com/cloak-containers/cloak/measurements/bundle"
)

// maxPolicySize keeps a policy's base64 form (a third larger) plus its JSON
// wrapper under the KBS's request limit.
const maxPolicySize = kbstypes.MaxRequestBody / 2

// policyCmd builds "resource-policy" and "attestation-policy", which differ
// only in the client calls and, for attestation policies, a policy id.
func (a *app) policyCmd(name, what, example string,
	set func(*adminclient.Client, context.Context, string, []byte) error,
	get func(*adminclient.Client, context.Context) (adminclient.Policy, error),
	withID bool,
) *cobra.Command {
	cmd := groupCmd(name, "Set or show the "+what, "", example)
	var file, id string
	setCmd := &cobra.Command{
		Use:     "set --file FILE",
		Short:   "Replace the " + what + " with a Rego file",
		Example: example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rego, err := a.readInput(file, maxPolicySize)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if err := set(c, ctx, id, rego); err != nil {
					return err
				}
				return a.emit(map[string]any{"updated": name, "policy_id": id, "bytes": len(rego)}, func(w io.Writer) {
					fmt.Fprintf(w, "%s updated (%d bytes of Rego)\n", what, len(rego))
				})
			})
		},
	}
	setCmd.Flags().StringVarP(&file, "file", "f", "", `Rego policy file ("-" reads standard input)`)
	if withID {
		setCmd.Flags().StringVar(&id, "id", "default", "policy id")
	}
	getCmd := &cobra.Command{
		Use:     "get",
		Short:   "Print the " + what + " (Rego source)",
		Example: fmt.Sprintf("  kbsctl %s get > current.rego\n  kbsctl -o json %s get", name, name),
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				p, err := get(c, ctx)
				if err != nil {
					return err
				}
				return a.emit(p, func(w io.Writer) {
					io.WriteString(w, p.Rego)
					if !strings.HasSuffix(p.Rego, "\n") {
						io.WriteString(w, "\n")
					}
				})
			})
		},
	}
	cmd.AddCommand(setCmd, getCmd)
	return cmd
}

func (a *app) resourcePolicyCmd() *cobra.Command {
	return a.policyCmd("resource-policy", "resource policy",
		`  kbsctl resource-policy set --file resource.rego
  kbsctl resource-policy get`,
		func(c *adminclient.Client, ctx context.Context, _ string, rego []byte) error {
			return c.SetResourcePolicy(ctx, rego)
		},
		(*adminclient.Client).GetResourcePolicy, false)
}

func (a *app) attestationPolicyCmd() *cobra.Command {
	return a.policyCmd("attestation-policy", "attestation policy",
		`  kbsctl attestation-policy set --file attestation.rego
  kbsctl attestation-policy set --id default --file - < attestation.rego`,
		(*adminclient.Client).SetAttestationPolicy,
		(*adminclient.Client).GetAttestationPolicy, true)
}

func (a *app) referenceValueCmd() *cobra.Command {
	cmd := groupCmd("reference-value", "Set or list the reference values attestation policies compare evidence with",
		`Reference values are named lists of accepted values, visible to attestation
policies as data.reference.<name>. Names are 1-64 characters of [a-z0-9_].`,
		`  kbsctl reference-value set sample_svn 2
  kbsctl reference-value list`)
	setCmd := &cobra.Command{
		Use:   "set NAME [VALUE...]",
		Short: "Replace the accepted values of NAME (no VALUE deletes NAME)",
		Example: `  kbsctl reference-value set sample_svn 2 3
  kbsctl reference-value set snp.measurement "$(cloak-measure --tee snp ...)"
  kbsctl reference-value set sample_svn     # deletes sample_svn`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, values := args[0], args[1:]
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if err := c.SetReferenceValue(ctx, name, values); err != nil {
					return err
				}
				return a.emit(adminapi.ReferenceValue{Name: name, Values: values}, func(w io.Writer) {
					if len(values) == 0 {
						fmt.Fprintf(w, "deleted %s\n", name)
						return
					}
					fmt.Fprintf(w, "%s = %s\n", name, quoteList(values))
				})
			})
		},
	}
	listCmd := &cobra.Command{
		Use:     "list",
		Short:   "List every reference value",
		Example: `  kbsctl reference-value list`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				all, err := c.ReferenceValues(ctx)
				if err != nil {
					return err
				}
				rv := all.ReferenceValues
				return a.emit(all, func(w io.Writer) {
					if len(rv) == 0 {
						fmt.Fprintln(w, "no reference values set")
						return
					}
					names := make([]string, 0, len(rv))
					for n := range rv {
						names = append(names, n)
					}
					slices.Sort(names)
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tVALUES")
					for _, n := range names {
						fmt.Fprintf(tw, "%s\t%s\n", n, quoteList(rv[n]))
					}
					tw.Flush()
					for _, n := range names {
						for _, b := range bundleCounts(all.Sources[n]) {
							fmt.Fprintf(w, "%s: %s\n", n, b)
						}
					}
				})
			})
		},
	}
	var file string
	importCmd := &cobra.Command{
		Use:   "import --file reference-values.cose",
		Short: "Import a signed reference-value bundle (cloak-image build --sign-key)",
		Long: `import sends a signed bundle to the KBS, which checks its signature against the keys
it was started with (--reference-value-signer) and adds every value in it to the stored
ones, each remembering the bundle and signer; an unsigned, tampered, truncated, oversized
or untrusted bundle is refused and nothing is stored.`,
		Example: `  kbsctl reference-value import --file out/image/reference-values.cose
  kbsctl reference-value import --file - < reference-values.cose`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// One byte over the limit, so the KBS says what is too large.
			data, err := a.readInput(file, bundle.MaxSize+1)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				res, err := c.ImportReferenceValues(ctx, data)
				if err != nil {
					return err
				}
				return a.emit(res, func(w io.Writer) {
					fmt.Fprintf(w, "imported bundle %s (%s) signed by %s\n", res.Bundle, res.BundleName, res.Signer)
					for _, v := range res.Values {
						state := "already stored"
						if v.New {
							state = "new"
						}
						fmt.Fprintf(w, "  %s %s (%s)\n", v.Name, v.Value, state)
					}
				})
			})
		},
	}
	importCmd.Flags().StringVarP(&file, "file", "f", "", `bundle file ("-" reads standard input)`)
	cmd.AddCommand(setCmd, listCmd, importCmd)
	return cmd
}

// bundleCounts summarises the sources of one name: "N values from bundle B
// (NAME), signer S", one line per bundle, sorted.
func bundleCounts(src map[string]adminapi.ReferenceValueSource) []string {
	n := map[adminapi.ReferenceValueSource]int{}
	for _, s := range src {
		s.Imported = s.Imported.UTC()
		n[s]++
	}
	var out []string
	for s, c := range n {
		out = append(out, fmt.Sprintf("%d value(s) from bundle %s (%s), signer %s, imported %s", c, s.Bundle, s.BundleName, s.Signer, s.Imported.Format(time.RFC3339)))
	}
	slices.Sort(out)
	return out
}

func quoteList(values []string) string {
	q := make([]string, len(values))
	for i, v := range values {
		q[i] = fmt.Sprintf("%q", v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
