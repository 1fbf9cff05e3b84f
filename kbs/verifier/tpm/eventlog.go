package tpm

import (
	"crypto"
	"fmt"

	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
)

// FirmwarePCRs are the PCRs an event log is replayed against: 0-7, which the
// PC Client profile reserves for firmware (SeaBIOS, OVMF) and which its log
// describes completely. PCRs 8 and up are extended by the OS and by Cloak
// (initdata) without entries in the firmware log.
const FirmwarePCRs = 8

// checkEventLog replays the TCG crypto-agile event log (go-eventlog) against
// the quoted sha256 PCRs 0-7 and returns a summary of the events.
func checkEventLog(p *parsed) (map[string]any, error) {
	mrs := make([]register.MR, 0, FirmwarePCRs)
	for i := range FirmwarePCRs {
		mrs = append(mrs, register.PCR{Index: i, Digest: p.pcrs[i], DigestAlg: crypto.SHA256})
	}
	events, err := replayEventLog(p.eventLog, mrs)
	if err != nil {
		return nil, fmt.Errorf("event log does not describe the quoted PCRs 0-%d: %w", FirmwarePCRs-1, err)
	}
	counts := map[string]any{}
	for _, e := range events {
		k := fmt.Sprintf("pcr%02d", e.Index)
		n, _ := counts[k].(int64)
		counts[k] = n + 1
	}
	return map[string]any{
		"events":        int64(len(events)),
		"events_by_pcr": counts,
		"replayed_pcrs": fmt.Sprintf("0-%d", FirmwarePCRs-1),
	}, nil
}

// replayEventLog guards the KBS against a panic in the parser of untrusted
// bytes.
func replayEventLog(b []byte, mrs []register.MR) (events []tcg.Event, err error) {
	defer func() {
		if r := recover(); r != nil {
			events, err = nil, fmt.Errorf("malformed event log (%v)", r)
		}
	}()
	return tcg.ParseAndReplay(b, mrs, tcg.ParseOpts{AllowPadding: true})
}
