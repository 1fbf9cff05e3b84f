package verifier

import (
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
