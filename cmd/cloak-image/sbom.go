package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/internal/sbom"
	"github.com/cloak-containers/cloak/internal/version"
)

func sbomCmd(stdout io.Writer) *cobra.Command {
	var name, ver, out string
	cmd := &cobra.Command{
		Use:   "sbom BINARY... [--out FILE]",
		Short: "Write an SPDX 2.3 SBOM (JSON) of Go binaries: every module each one links",
		Long: `sbom reads the module list the Go linker records in each binary (what 'go version -m'
prints) and writes an SPDX 2.3 JSON document: a package per binary with its SHA-256, a package per
module at the version linked (with its purl and go.sum hash), the Go toolchain, and DEPENDS_ON
relationships. The creation time is $SOURCE_DATE_EPOCH when set, so a release's SBOM is
reproducible; otherwise now. make release writes one into the tarball.`,
		Example: `  cloak-image sbom bin/kbs bin/kbsctl --out sbom.spdx.json
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) cloak-image sbom --version v0.3.0 bin/*`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, bins []string) error {
			created := time.Now()
			if e := os.Getenv("SOURCE_DATE_EPOCH"); e != "" {
				secs, err := strconv.ParseInt(e, 10, 64)
				if err != nil {
					return fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", e)
				}
				created = time.Unix(secs, 0)
			}
			doc, err := sbom.New(sbom.Options{Name: name, Version: ver, Created: created, Tool: "cloak-image " + version.Version}, bins)
			if err != nil {
				return err
			}
			b, err := doc.Marshal()
			if err != nil {
				return err
			}
			if out == "" {
				_, err = stdout.Write(b)
				return err
			}
			if err := os.WriteFile(out, b, 0o644); err != nil {
				return errors.New("write the SBOM: " + err.Error())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "cloak", "name of what the binaries make up")
	cmd.Flags().StringVar(&ver, "version", version.Version, "its version (default: this cloak-image's)")
	cmd.Flags().StringVar(&out, "out", "", "file to write (default: stdout)")
	return cmd
}
