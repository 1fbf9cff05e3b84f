package adminapi

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckReferenceValues(t *testing.T) {
	meas := strings.Repeat("0a", 48)
	for _, c := range []struct {
		name string
		rv   ReferenceValue
		want string // "" accepted
	}{
		{"snp measurement", ReferenceValue{Name: "snp_launch_measurement", Values: []string{meas}}, ""},
		{"init_data sha256", ReferenceValue{Name: "init_data", Values: []string{strings.Repeat("1f", 32)}}, ""},
		{"tpm pcr", ReferenceValue{Name: "tpm_pcr23", Values: []string{strings.Repeat("1f", 32)}}, ""},
		{"tcb", ReferenceValue{Name: "snp_minimum_tcb_microcode", Values: []string{"115"}}, ""},
		{"custom", ReferenceValue{Name: "svn", Custom: true, Values: []string{"x"}}, ""},
		{"typo", ReferenceValue{Name: "snp_launch_measurment", Values: []string{meas}}, `did you mean "snp_launch_measurement"?`},
		{"far from any", ReferenceValue{Name: "zzzzzzzzzz", Values: []string{"1"}}, "unknown reference value (a name"},
		{"pcr 24", ReferenceValue{Name: "tpm_pcr24", Values: []string{strings.Repeat("1f", 32)}}, `did you mean "tpm_pcr`},
		{"non-hex", ReferenceValue{Name: "snp_launch_measurement", Values: []string{"nothex"}}, "is not hex"},
		{"odd hex", ReferenceValue{Name: "snp_host_data", Values: []string{"abc"}}, "is not hex"},
		{"wrong length", ReferenceValue{Name: "snp_host_data", Values: []string{meas}}, "96 hex digits (48 bytes): want lowercase hex of 64 digits"},
		{"empty string", ReferenceValue{Name: "tdx_rtmr1", Values: []string{""}}, "is empty"},
		{"custom empty string", ReferenceValue{Name: "svn", Custom: true, Values: []string{""}}, "is empty"},
		{"space", ReferenceValue{Name: "sample_svn", Values: []string{" 1"}}, "white space"},
		{"not a number", ReferenceValue{Name: "sample_svn", Values: []string{"one"}}, "not a decimal number"},
		{"bad name", ReferenceValue{Name: "Bad.Name", Values: []string{"1"}}, "use 1-64 characters"},
	} {
		err := CheckReferenceValues(c.rv)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	if err := CheckReferenceValues(ReferenceValue{Name: "sample_svn"}); !errors.Is(err, ErrNoValues) || !strings.Contains(err.Error(), "reference-value delete") {
		t.Errorf("no values: %v", err)
	}
}

func TestParseReferenceFile(t *testing.T) {
	m := strings.Repeat("ab", 48)
	got, err := ParseReferenceFile([]byte(`{"tdx_mr_td":["`+m+`"],"sample_svn":["1","2"]}`), false)
	if err != nil || len(got) != 2 || got[0].Name != "sample_svn" || len(got[0].Values) != 2 || got[1].Values[0] != m {
		t.Fatalf("%+v %v", got, err)
	}
	if got, err := ParseReferenceFile([]byte(`{"svn":["1"],"sample_svn":["1"]}`), true); err != nil || !got[1].Custom || got[0].Custom {
		t.Fatalf("custom: %+v %v", got, err)
	}
	for _, c := range []struct{ in, want string }{
		{`{"svn":["1"]}`, "unknown reference value"},
		{`{"sample_svn":[]}`, "no values given"},
		{`{}`, "names no reference value"},
		{`["x"]`, "want a JSON object"},
		{`{"sample_svn":["1"]} {}`, "data after"},
		{`{"sample_svn":[1]}`, "want a JSON object"},
		{strings.Repeat(" ", MaxReferenceFileSize+1), "limit is"},
	} {
		if _, err := ParseReferenceFile([]byte(c.in), false); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.40q: %v, want %q", c.in, err, c.want)
		}
	}
}

// FuzzParseReferenceFile: the file is the admin's untrusted input; whatever
// it holds, the parser returns an error or values every check accepts.
func FuzzParseReferenceFile(f *testing.F) {
	f.Add([]byte(`{"snp_launch_measurement":["` + strings.Repeat("ab", 48) + `"],"sample_svn":["1"]}`))
	f.Add([]byte(`{"snp_launch_measurment":["nothex"]}`))
	f.Add([]byte(`{"svn":[""]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, custom := range []bool{false, true} {
			got, err := ParseReferenceFile(data, custom)
			if err != nil {
				continue
			}
			for _, rv := range got {
				if err := CheckReferenceValues(rv); err != nil {
					t.Fatalf("parsed %+v fails its check: %v", rv, err)
				}
			}
		}
	})
}
