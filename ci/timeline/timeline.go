package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
)

// maxAuditBytes bounds the audit file (kbsctl prints at most a few thousand
// entries of a few hundred bytes).
const maxAuditBytes = 64 << 20

// phase is one row of a timeline.
type phase struct {
	Name   string  `json:"name"`
	At     float64 `json:"at_s"`
	Step   float64 `json:"step_s"`
	Detail string  `json:"detail"`

	t time.Time
}

// timeline is what `show` prints, and its JSON form.
type timeline struct {
	Container string  `json:"container"`
	Sandbox   string  `json:"sandbox"`
	Tee       string  `json:"tee"`
	Image     string  `json:"image"`
	Encrypted bool    `json:"encrypted"`
	Phases    []phase `json:"phases"`
	Total     float64 `json:"total_s"`

	// problems are fields of the log line that could not be read; their
	// phases are left out.
	problems []string
}

// hostPhases are the phases the shim stamps with host times, in the order
// they happen: rows with equal times keep this order.
var hostPhases = []struct{ name, key, detail string }{
	{"vm", "vm_requested", "VM requested (the shim starts the pod's VM)"},
	{"qemu", "qemu_started", "QEMU started"},
	{"agent", "agent_ready", "guest agent ready (VM boot)"},
	{"sandbox", "sandbox_ready", "sandbox ready (network, initdata bound)"},
	{"pull", "pull_started", "image pull started in the guest"},
}

// buildTimeline turns one timeline line, and the audit entries of the KBS
// if any, into rows sorted by time, "at" counted from the VM request.
func buildTimeline(p podStart, audit []adminapi.AuditEntry) timeline {
	tl := timeline{
		Container: p.fields["container"],
		Sandbox:   p.fields["sandbox"],
		Tee:       p.fields["tee"],
		Image:     p.fields["image"],
		Encrypted: p.fields["encrypted"] == "true",
	}
	hostTime := func(key string) (time.Time, bool) {
		t, ok, problem := p.timeField(key)
		if problem != "" {
			tl.problems = append(tl.problems, problem)
		}
		return t, ok
	}
	guestDur := func(key string) (time.Duration, bool) {
		d, ok, problem := p.usField(key)
		if problem != "" {
			tl.problems = append(tl.problems, problem)
		}
		return d, ok
	}
	add := func(name string, t time.Time, detail string) {
		tl.Phases = append(tl.Phases, phase{Name: name, Detail: detail, t: t})
	}

	for _, h := range hostPhases {
		if t, ok := hostTime(h.key); ok {
			add(h.name, t, h.detail)
		}
	}
	pullStarted, havePullStarted := hostTime("pull_started")
	if resolve, ok := guestDur("resolve_us"); ok && havePullStarted {
		// A guest duration on a host time: the guest clock only measures.
		add("resolve", pullStarted.Add(resolve), "manifest and config resolved")
	}
	pullDone, havePullDone := hostTime("pull_done")
	if havePullStarted {
		// The KBS stamps its audit with the host clock, like the shim. A
		// line without pull_done takes the KBS's decisions up to the create.
		end, haveEnd := pullDone, havePullDone
		for _, key := range []string{"created", "started"} {
			if !haveEnd {
				end, haveEnd = hostTime(key)
			}
		}
		if haveEnd {
			if e, ok := lastEntry(audit, adminapi.KindAttest, pullStarted, end); ok {
				add("attest", e.Time, attestDetail(e))
			}
			if e, ok := lastEntry(audit, adminapi.KindRelease, pullStarted, end); ok {
				add("release", e.Time, releaseDetail(e))
			}
		}
	}
	if havePullDone {
		add("layers", pullDone, layersDetail(tl.Encrypted, guestDur))
	}
	if t, ok := hostTime("created"); ok {
		if d, ok := guestDur("policy_us"); ok {
			add("policy", t, fmt.Sprintf("agent policy: %.3f s of guest time deciding the pod's requests so far", d.Seconds()))
		}
		add("created", t, "container created")
	}
	if t, ok := hostTime("started"); ok {
		add("started", t, "container started")
	}

	tl.problems = dedupe(tl.problems)
	sort.SliceStable(tl.Phases, func(i, j int) bool { return tl.Phases[i].t.Before(tl.Phases[j].t) })
	if len(tl.Phases) == 0 {
		return tl
	}
	base := tl.Phases[0].t
	if t, ok, _ := p.timeField("vm_requested"); ok {
		base = t
	}
	prev := base
	for i := range tl.Phases {
		ph := &tl.Phases[i]
		ph.At = ph.t.Sub(base).Seconds()
		ph.Step = ph.t.Sub(prev).Seconds()
		prev = ph.t
	}
	tl.Total = tl.Phases[len(tl.Phases)-1].At
	return tl
}

// lastEntry is the last entry of a kind with a time in [from, to].
func lastEntry(audit []adminapi.AuditEntry, kind string, from, to time.Time) (adminapi.AuditEntry, bool) {
	var last adminapi.AuditEntry
	found := false
	for _, e := range audit {
		if e.Kind != kind || e.Time.Before(from) || e.Time.After(to) {
			continue
		}
		if !found || !e.Time.Before(last.Time) {
			last, found = e, true
		}
	}
	return last, found
}

func attestDetail(e adminapi.AuditEntry) string {
	if e.Verdict == "affirming" {
		return fmt.Sprintf("attestation affirming at the KBS (audit #%d)", e.Seq)
	}
	return fmt.Sprintf("attestation %s at the KBS (audit #%d: %s)", orUnknown(e.Verdict), e.Seq, why(e))
}

func releaseDetail(e adminapi.AuditEntry) string {
	if e.Verdict == "allow" {
		return fmt.Sprintf("key released by the KBS (audit #%d, %s)", e.Seq, orUnknown(e.Resource))
	}
	return fmt.Sprintf("key withheld by the KBS (audit #%d: %s)", e.Seq, why(e))
}

// why is the reason of a refusal: the KBS's sentence, else what decided.
func why(e adminapi.AuditEntry) string {
	if e.Detail != "" {
		return e.Detail
	}
	if e.Check != "" {
		return "check " + e.Check
	}
	return "verdict " + orUnknown(e.Verdict)
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

// layersDetail describes the streamed layer work; the guest reports sums of
// the per-layer times, which overlap in reality.
func layersDetail(encrypted bool, guestDur func(string) (time.Duration, bool)) string {
	var parts []string
	if d, ok := guestDur("fetch_us"); ok {
		parts = append(parts, fmt.Sprintf("fetch %.3f s", d.Seconds()))
	}
	decrypt, haveDecrypt := guestDur("decrypt_us")
	decrypted := encrypted || (haveDecrypt && decrypt > 0)
	if haveDecrypt && decrypted {
		parts = append(parts, fmt.Sprintf("decrypt %.3f s incl. key", decrypt.Seconds()))
	}
	if d, ok := guestDur("unpack_us"); ok {
		parts = append(parts, fmt.Sprintf("unpack %.3f s", d.Seconds()))
	}
	s := "layers fetched and unpacked"
	if decrypted {
		s = "layers fetched, decrypted and unpacked"
	}
	if len(parts) > 0 {
		s += " (guest: " + strings.Join(parts, ", ") + ")"
	}
	return s
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	out := s[:0]
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// pickTimeline chooses the line of a container (a full ID or a unique
// prefix), or the newest line of the log when id is empty. A container
// logged twice is taken at its last line.
func pickTimeline(starts []podStart, id string) (podStart, error) {
	if len(starts) == 0 {
		return podStart{}, fmt.Errorf("no %q line in the log: check that the pod was started with the cloak shim and that containerd logs at info level or lower", timelineMsg)
	}
	if id == "" {
		return starts[len(starts)-1], nil
	}
	var match []podStart
	ids := map[string]bool{}
	for _, s := range starts {
		if strings.HasPrefix(s.container(), id) {
			match = append(match, s)
			ids[s.container()] = true
		}
	}
	switch {
	case len(match) == 0:
		return podStart{}, fmt.Errorf("no %q line for a container %q: the log has lines for %s", timelineMsg, id, containerList(starts))
	case len(ids) > 1:
		return podStart{}, fmt.Errorf("container %q is ambiguous: it starts %d container IDs; give more of the ID", id, len(ids))
	}
	return match[len(match)-1], nil
}

// containerList names the newest few containers of the log.
func containerList(starts []podStart) string {
	const most = 5
	var ids []string
	seen := map[string]bool{}
	for i := len(starts) - 1; i >= 0; i-- {
		if c := starts[i].container(); !seen[c] {
			seen[c] = true
			ids = append(ids, shortID(c))
		}
	}
	if len(ids) > most {
		return strings.Join(ids[:most], ", ") + fmt.Sprintf(" and %d more (newest first)", len(ids)-most)
	}
	return strings.Join(ids, ", ") + " (newest first)"
}

func shortID(id string) string {
	if id == "" {
		return "(no ID)"
	}
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// readAudit reads what `kbsctl -o json audit` prints: one page
// {"entries":[...],"next":N}, or entries one per line (audit --follow).
func readAudit(r io.Reader) ([]adminapi.AuditEntry, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxAuditBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxAuditBytes {
		return nil, fmt.Errorf("larger than %d MiB: pass fewer entries (kbsctl audit --after SEQ --limit N)", maxAuditBytes>>20)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var entries []adminapi.AuditEntry
	for n := 1; ; n++ {
		var v struct {
			Entries *[]adminapi.AuditEntry `json:"entries"`
			adminapi.AuditEntry
		}
		if err := dec.Decode(&v); errors.Is(err, io.EOF) {
			return entries, nil
		} else if err != nil {
			return nil, fmt.Errorf("JSON value %d: %w (want the output of kbsctl -o json audit)", n, err)
		}
		switch {
		case v.Entries != nil:
			entries = append(entries, *v.Entries...)
		case v.Kind != "":
			entries = append(entries, v.AuditEntry)
		default:
			return nil, fmt.Errorf("JSON value %d is neither an audit page (entries) nor an audit entry (kind): want the output of kbsctl -o json audit", n)
		}
	}
}
