package tdx

import (
	"fmt"

	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
)

// firmwareRTMRs is how many RTMRs the CCEL covers: firmware and boot loader
// extend RTMR0-2; RTMR3 is left to the running guest (Trustee's AA event
// log), so the CCEL says nothing about it.
const firmwareRTMRs = 3

// replayEventLog replays a CC event log (TCG crypto-agile format, SHA-384)
// against RTMR0-2 of a verified quote. Every event counted in the claim has
// a digest the RTMRs vouch for.
func replayEventLog(raw []byte, rtmrs [][]byte) (claims map[string]any, err error) {
	if len(rtmrs) < firmwareRTMRs {
		return nil, fmt.Errorf("quote has %d RTMRs, want 4", len(rtmrs))
	}
	bank := register.RTMRBank{}
	for i := range firmwareRTMRs {
		bank.RTMRs = append(bank.RTMRs, register.RTMR{Index: i, Digest: rtmrs[i]})
	}
	// The parser indexes by sizes read from the log; treat a panic on a
	// corrupt log as a replay failure.
	defer func() {
		if r := recover(); r != nil {
			claims, err = nil, fmt.Errorf("event log is corrupt (%v)", r)
		}
	}()
	// CCELs carry trailing padding up to the size firmware reserved.
	events, err := tcg.ParseAndReplay(raw, bank.MRs(), tcg.ParseOpts{AllowPadding: true})
	if err != nil {
		return nil, err
	}
	perRTMR := make([]int, firmwareRTMRs)
	for _, e := range events {
		// CC measurement register index: 0 is MRTD, 1-3 are RTMR0-2.
		if i := e.Index - 1; i >= 0 && i < firmwareRTMRs {
			perRTMR[i]++
		}
	}
	return map[string]any{
		"replayed":        true,
		"events":          len(events),
		"events_per_rtmr": perRTMR,
	}, nil
}
