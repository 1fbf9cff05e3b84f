package verifier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

type fake struct{}

func (fake) Verify(context.Context, json.RawMessage, []byte, []byte) (map[string]any, error) {
	return nil, nil
}

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	r.Register("sample", fake{})
	r.Register("snp", fake{})
	if _, err := r.Lookup("sample"); err != nil {
		t.Fatalf("Lookup(sample): %v", err)
	}
	_, err := r.Lookup("tdx")
	var ce *CheckError
	if !errors.Is(err, ErrUnknownTee) || !errors.As(err, &ce) || ce.Check != CheckTee {
		t.Fatalf("Lookup(tdx) err = %v", err)
	}
	if !strings.Contains(err.Error(), "[sample snp]") {
		t.Fatalf("error should list supported TEEs: %v", err)
	}
}

func TestReportDataMismatch(t *testing.T) {
	err := ReportDataMismatch([]byte{1}, []byte{2})
	if got := err.Error(); got != "report data mismatch: expected 01, got 02" {
		t.Fatalf("got %q", got)
	}
}

// The KBS hands verifiers the 48-byte runtime-data digest; the 64-byte
// fields get it zero-padded, as Trustee's regularize_data pads it.
func TestFitReportData(t *testing.T) {
	digest := bytes.Repeat([]byte{0x8a}, 48)
	got, err := FitReportData("snp", digest)
	if err != nil || !bytes.Equal(got, append(append([]byte{}, digest...), make([]byte, 16)...)) {
		t.Fatalf("FitReportData = %x, %v", got, err)
	}
	for _, bad := range [][]byte{nil, make([]byte, 65)} {
		if _, err := FitReportData("snp", bad); err == nil || !strings.Contains(err.Error(), "snp verifier") {
			t.Errorf("%d bytes: err = %v, want an snp verifier error", len(bad), err)
		}
	}
}
