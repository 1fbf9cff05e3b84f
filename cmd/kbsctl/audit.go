package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/kbs/adminclient"
)

// explainedEntry is an audit entry as kbsctl prints it in JSON: the KBS's
// record plus the paragraph the text output shows.
type explainedEntry struct {
	adminapi.AuditEntry
	Explanation string `json:"explanation"`
}

func (a *app) auditCmd() *cobra.Command {
	var (
		follow bool
		after  uint64
		limit  int
		kind   string
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Explain the KBS's attestation and release decisions and admin changes",
		Long: `audit prints the KBS audit log, one paragraph per decision: who asked for what,
what the KBS decided, which check decided it and, for refusals, each trust claim
and reference value that failed. Admin changes (resources, policies, reference
values) are entries of kind admin, naming the key that made them and the digest
of the new value; --kind shows one kind only.

With -o json, prints {"entries":[...],"next":N} (each entry with an
"explanation"); with --follow, prints one JSON entry per line instead.`,
		Example: `  kbsctl audit --limit 20
  kbsctl audit --after 120
  kbsctl audit --follow
  kbsctl audit --kind admin
  kbsctl -o json audit --follow | jq 'select(.verdict=="deny")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return usagef("--limit must not be negative")
			}
			switch kind {
			case "", adminapi.KindAdmin, adminapi.KindAttest, adminapi.KindRelease:
			default:
				return usagef("--kind %q: want admin, attest or release", kind)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			if follow {
				return a.followAudit(cmd.Context(), c, after, limit, kind)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
			defer cancel()
			page, err := c.Audit(ctx, after, limit, kind)
			if err != nil {
				return err
			}
			var x adminclient.Explainer
			out := struct {
				Entries []explainedEntry `json:"entries"`
				Next    uint64           `json:"next"`
			}{explain(&x, page.Entries), page.Next}
			return a.emit(out, func(w io.Writer) {
				if len(page.Entries) == 0 {
					fmt.Fprintf(w, "no audit entries after #%d\n", after)
					return
				}
				for _, e := range out.Entries {
					printEntry(w, e)
				}
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "F", false, "keep polling every second for new entries until interrupted")
	cmd.Flags().Uint64Var(&after, "after", 0, "show entries after this sequence number")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many entries per request (0: the KBS default)")
	cmd.Flags().StringVar(&kind, "kind", "", "show only entries of this kind: admin, attest or release")
	return cmd
}

// followAudit polls until ctx is cancelled (Ctrl-C), which is a normal end.
// A failed poll ends it with that error: a silent retry loop would hide a
// KBS that went away.
func (a *app) followAudit(ctx context.Context, c *adminclient.Client, after uint64, limit int, kind string) error {
	enc := json.NewEncoder(a.stdout)
	var x adminclient.Explainer
	for {
		reqCtx, cancel := context.WithTimeout(ctx, a.timeout)
		page, err := c.Audit(reqCtx, after, limit, kind)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		for _, e := range explain(&x, page.Entries) {
			if a.output == "json" {
				if err := enc.Encode(e); err != nil {
					return err
				}
			} else {
				printEntry(a.stdout, e)
			}
		}
		if page.Next > after {
			after = page.Next
		}
		// A full page means more may be waiting: ask again at once.
		if limit > 0 && len(page.Entries) >= limit {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(a.poll):
		}
	}
}

func explain(x *adminclient.Explainer, entries []adminapi.AuditEntry) []explainedEntry {
	out := make([]explainedEntry, len(entries))
	for i, e := range entries {
		out[i] = explainedEntry{e, x.Explain(e)}
	}
	return out
}

func printEntry(w io.Writer, e explainedEntry) {
	fmt.Fprintf(w, "#%d %s\n%s\n\n", e.Seq, e.Time.UTC().Format(time.RFC3339), e.Explanation)
}
