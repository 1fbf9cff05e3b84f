package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/adminclient"
)

func (a *app) resourceCmd() *cobra.Command {
	cmd := groupCmd("resource", "Store, read, delete and list the secrets the KBS releases",
		`Resources are the secrets the KBS releases to attested guests, named
<repository>/<type>/<tag> (guests ask for kbs:///<repository>/<type>/<tag>).`,
		`  kbsctl resource set default/image-kek/1 --file image.kek
  kbsctl resource list`)
	cmd.AddCommand(a.resourceSetCmd(), a.resourceGetCmd(), a.resourceDeleteCmd(), a.resourceListCmd())
	return cmd
}

// resourceArg checks a PATH argument before anything is read or sent.
func resourceArg(cmd *cobra.Command, args []string) error {
	if err := cobra.ExactArgs(1)(cmd, args); err != nil {
		return err
	}
	if _, err := kbstypes.ParseResourcePath(args[0]); err != nil {
		return usageError{err}
	}
	return nil
}

func (a *app) resourceSetCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "set PATH --file FILE",
		Short: "Store a resource (replacing any previous value)",
		Example: `  head -c 32 /dev/urandom > image.kek
  kbsctl resource set default/image-kek/1 --file image.kek
  echo -n 's3cret' | kbsctl resource set default/password/db --file -`,
		Args: resourceArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			value, err := a.readInput(file, kbstypes.MaxResourceSize)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				info, err := c.SetResource(ctx, args[0], value)
				if err != nil {
					return err
				}
				return a.emit(info, func(w io.Writer) {
					fmt.Fprintf(w, "stored %s (%d bytes)\n", info.Path, info.Size)
				})
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", `file holding the value ("-" reads standard input)`)
	return cmd
}

func (a *app) resourceGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get PATH",
		Short: "Print a resource's value (raw bytes; base64 in JSON output)",
		Example: `  kbsctl resource get default/password/db
  kbsctl resource get default/image-kek/1 > image.kek
  kbsctl -o json resource get default/image-kek/1`,
		Args: resourceArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				value, err := c.GetResource(ctx, args[0])
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.emit(struct {
						Path  string `json:"path"`
						Value string `json:"value"`
					}{args[0], base64.StdEncoding.EncodeToString(value)}, nil)
				}
				_, err = a.stdout.Write(value)
				return err
			})
		},
	}
}

func (a *app) resourceDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "delete PATH",
		Short:   "Delete a resource",
		Example: `  kbsctl resource delete default/password/db`,
		Args:    resourceArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if err := c.DeleteResource(ctx, args[0]); err != nil {
					return err
				}
				return a.emit(map[string]string{"deleted": args[0]}, func(w io.Writer) {
					fmt.Fprintf(w, "deleted %s\n", args[0])
				})
			})
		},
	}
}

func (a *app) resourceListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List stored resources (names and sizes, never values)",
		Example: `  kbsctl resource list
  kbsctl -o json resource list | jq -r '.resources[].path'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *adminclient.Client) error {
				list, err := c.ListResources(ctx)
				if err != nil {
					return err
				}
				if list == nil {
					list = []adminapi.ResourceInfo{}
				}
				return a.emit(adminapi.ResourceList{Resources: list}, func(w io.Writer) {
					if len(list) == 0 {
						fmt.Fprintln(w, "no resources stored")
						return
					}
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "PATH\tSIZE\tUPDATED")
					for _, r := range list {
						fmt.Fprintf(tw, "%s\t%d\t%s\n", r.Path, r.Size, r.Updated.UTC().Format(time.RFC3339))
					}
					tw.Flush()
				})
			})
		},
	}
}
