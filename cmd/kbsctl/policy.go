package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/adminclient"
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
	cmd := groupCmd("reference-value", "Set, add, remove, import or list the reference values attestation policies compare evidence with",
		`Reference values are named lists of accepted values, visible to attestation
policies as data.reference.<name>. The names the default policy reads take only
values shaped like the claim they are compared with (kbsctl reference-value names
lists them); any other name is for a policy of your own and needs --custom.
kbsctl checks before it sends, and the KBS checks again.`,
		`  kbsctl reference-value set sample_svn 2
  kbsctl reference-value list`)
	var custom bool
	customFlag := func(c *cobra.Command) {
		c.Flags().BoolVar(&custom, "custom", false, "NAME is read only by your own policy: check the value's size, not its shape")
	}
	check := func(rv adminapi.ReferenceValue) error {
		if err := adminapi.CheckReferenceValues(rv); err != nil {
			return usageError{err}
		}
		return nil
	}
	setCmd := &cobra.Command{
		Use:   "set NAME VALUE...",
		Short: "Replace the accepted values of NAME",
		Example: `  kbsctl reference-value set sample_svn 2 3
  kbsctl reference-value set snp_launch_measurement "$(jq -r .measurements.emulated out/image/manifest.json)"
  kbsctl reference-value set --custom svn 1     # a name only your own policy reads`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rv := adminapi.ReferenceValue{Name: args[0], Values: args[1:], Custom: custom}
			if err := check(rv); err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if err := c.PutReferenceValue(ctx, rv); err != nil {
					return err
				}
				return a.emit(rv, func(w io.Writer) { fmt.Fprintf(w, "%s = %s\n", rv.Name, quoteList(rv.Values)) })
			})
		},
	}
	customFlag(setCmd)
	// add and remove change the stored list: read it, change it, set it. Two
	// admins changing one name at once can lose an update.
	addCmd := &cobra.Command{
		Use:     "add NAME VALUE...",
		Short:   "Add values to the accepted values of NAME",
		Example: `  kbsctl reference-value add tdx_rtmr2 "$RTMR2"`,
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, values := args[0], args[1:]
			if err := check(adminapi.ReferenceValue{Name: name, Values: values, Custom: custom}); err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				rv, err := addReferenceValues(ctx, c, adminapi.ReferenceValue{Name: name, Values: values, Custom: custom})
				if err != nil {
					return err
				}
				return a.emit(rv, func(w io.Writer) { fmt.Fprintf(w, "%s = %s\n", rv.Name, quoteList(rv.Values)) })
			})
		},
	}
	customFlag(addCmd)
	removeCmd := &cobra.Command{
		Use:     "remove NAME VALUE...",
		Short:   "Remove values from the accepted values of NAME (the last one deletes NAME)",
		Example: `  kbsctl reference-value remove sample_svn 1`,
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, drop := args[0], args[1:]
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				all, err := c.ListReferenceValues(ctx)
				if err != nil {
					return err
				}
				cur, ok := all[name]
				if !ok {
					return fmt.Errorf("reference value %q is not set", name)
				}
				for _, v := range drop {
					if !slices.Contains(cur, v) {
						return fmt.Errorf("reference value %q has no value %q: it has %s", name, v, quoteList(cur))
					}
				}
				left := slices.DeleteFunc(slices.Clone(cur), func(v string) bool { return slices.Contains(drop, v) })
				if len(left) == 0 {
					if err := c.DeleteReferenceValue(ctx, name); err != nil {
						return err
					}
					return a.emit(adminapi.ReferenceValue{Name: name, Values: []string{}}, func(w io.Writer) {
						fmt.Fprintf(w, "deleted %s (no values left)\n", name)
					})
				}
				_, known := adminapi.KnownReferenceValues[name]
				rv := adminapi.ReferenceValue{Name: name, Values: left, Custom: !known}
				if err := c.PutReferenceValue(ctx, rv); err != nil {
					return err
				}
				return a.emit(rv, func(w io.Writer) { fmt.Fprintf(w, "%s = %s\n", rv.Name, quoteList(rv.Values)) })
			})
		},
	}
	deleteCmd := &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete NAME and all its values",
		Example: `  kbsctl reference-value delete sample_svn`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if err := c.DeleteReferenceValue(ctx, name); err != nil {
					return err
				}
				return a.emit(adminapi.ReferenceValue{Name: name, Values: []string{}}, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", name) })
			})
		},
	}
	namesCmd := &cobra.Command{
		Use:     "names",
		Short:   "List the names the default policy reads and the values each takes",
		Example: `  kbsctl reference-value names`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			names := slices.Sorted(maps.Keys(adminapi.KnownReferenceValues))
			out := map[string]string{}
			for _, n := range names {
				out[n] = adminapi.KnownReferenceValues[n].String()
			}
			return a.emit(out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tCLAIM\tVALUES")
				for _, n := range names {
					k := adminapi.KnownReferenceValues[n]
					fmt.Fprintf(tw, "%s\t%s\t%s\n", n, k.Claim, k)
				}
				tw.Flush()
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
		Use:   "import [FILE | --file FILE]",
		Short: "Import reference values: a signed bundle (cloak-image build --sign-key) or a JSON file",
		Long: `import reads FILE ("-" is standard input) and adds its values to the stored ones.

A signed bundle (reference-values.cose, what cloak-image build --sign-key writes) goes
to the KBS, which checks its signature against the keys it was started with
(--reference-value-signer) and every value by name, and adds them all, each
remembering the bundle and signer; an unsigned, tampered, truncated, oversized or
untrusted bundle, or one with a value that does not fit its name, is refused and
nothing is stored.

A JSON file is an object of name -> list of values (what evidence verify
--reference-values reads). Every value is checked before anything is sent; then
each name is added as reference-value add does, one request per name.`,
		Example: `  kbsctl reference-value import out/image/reference-values.cose
  kbsctl reference-value import - < reference-values.cose
  kbsctl reference-value import refs.json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if file != "" {
					return usagef("give FILE or --file, not both")
				}
				file = args[0]
			}
			// One byte over the limit, so the KBS says what is too large.
			data, err := a.readInput(file, max(bundle.MaxSize, adminapi.MaxReferenceFileSize)+1)
			if err != nil {
				return err
			}
			if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
				return a.importJSON(cmd, data, custom)
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
	importCmd.Flags().StringVarP(&file, "file", "f", "", `file to import ("-" reads standard input)`)
	customFlag(importCmd)
	cmd.AddCommand(setCmd, addCmd, removeCmd, deleteCmd, listCmd, importCmd, namesCmd)
	return cmd
}

// importJSON adds the values of a JSON reference-value file, all checked
// before the first request.
func (a *app) importJSON(cmd *cobra.Command, data []byte, custom bool) error {
	rvs, err := adminapi.ParseReferenceFile(data, custom)
	if err != nil {
		return usageError{err}
	}
	return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
		var done []adminapi.ReferenceValue
		for _, rv := range rvs {
			got, err := addReferenceValues(ctx, c, rv)
			if err != nil {
				return fmt.Errorf("%w (imported before it: %d of %d names)", err, len(done), len(rvs))
			}
			done = append(done, got)
		}
		return a.emit(done, func(w io.Writer) {
			for _, rv := range done {
				fmt.Fprintf(w, "%s = %s\n", rv.Name, quoteList(rv.Values))
			}
		})
	})
}

// addReferenceValues sets rv.Name to its stored values plus rv.Values and
// returns what it set.
func addReferenceValues(ctx context.Context, c *adminclient.Client, rv adminapi.ReferenceValue) (adminapi.ReferenceValue, error) {
	all, err := c.ListReferenceValues(ctx)
	if err != nil {
		return rv, err
	}
	merged := slices.Clone(all[rv.Name])
	for _, v := range rv.Values {
		if !slices.Contains(merged, v) {
			merged = append(merged, v)
		}
	}
	rv.Values = merged
	return rv, c.PutReferenceValue(ctx, rv)
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
