package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestSummarise(t *testing.T) {
	tests := []struct {
		in               []float64
		median, min, max float64
	}{
		{[]float64{3}, 3, 3, 3},
		{[]float64{5, 1, 3}, 3, 1, 5},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
		{[]float64{2, 2, 9, 1, 1, 8}, 2, 1, 9},
	}
	for _, tt := range tests {
		in := append([]float64(nil), tt.in...)
		m, lo, hi := summarise(in)
		if m != tt.median || lo != tt.min || hi != tt.max {
			t.Errorf("summarise(%v) = %v [%v-%v], want %v [%v-%v]", tt.in, m, lo, hi, tt.median, tt.min, tt.max)
		}
		if !reflect.DeepEqual(in, tt.in) {
			t.Errorf("summarise reordered its input: %v", in)
		}
	}
}

const runs = `runc	runp	0.10
runc	create	0.05
runc	total	0.41
cloak	vm	0
cloak	attest	0.7
cloak	total	6.8
# a comment
runc	total	0.38
cloak	vm	0
cloak	total	5.9

runc	total	0.52
cloak	vm	0
cloak	total	6.2
cloak	total	6.4
`

func TestMedianText(t *testing.T) {
	code, out, errOut := runT(t, runs, "median")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := `phase    runc (n=3)                cloak (n=4)
runp     0.100 [0.100-0.100] n=1   -
create   0.050 [0.050-0.050] n=1   -
total    0.410 [0.380-0.520]       6.300 [5.900-6.800]
vm       -                         0.000 [0.000-0.000] n=3
attest   -                         0.700 [0.700-0.700] n=1
`
	if out != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
}

func TestMedianJSONAndFiles(t *testing.T) {
	a := writeFile(t, "runc.tsv", "runc\ttotal\t0.3\nrunc\ttotal\t0.1\n")
	b := writeFile(t, "cloak.tsv", "cloak\tlayers\t1.5\ncloak\tlayers\t0.5\ncloak\tlayers\t1.0\n")
	code, out, errOut := runT(t, "ignored\tstdin\t1\n", "median", "--output", "json", a, b)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got struct{ Labels []labelStats }
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	want := []labelStats{
		{Label: "runc", N: 2, Phases: []stat{{Name: "total", N: 2, Median: 0.2, Min: 0.1, Max: 0.3}}},
		{Label: "cloak", N: 3, Phases: []stat{{Name: "layers", N: 3, Median: 1.0, Min: 0.5, Max: 1.5}}},
	}
	if !reflect.DeepEqual(got.Labels, want) {
		t.Errorf("got %+v\nwant %+v", got.Labels, want)
	}
}

func TestMedianErrors(t *testing.T) {
	tests := []struct {
		name, stdin string
		args        []string
		code        int
		want        string
	}{
		{"two fields", "runc\t0.4\n", nil, exitFailure, `stdin:1: "runc\t0.4" has 2 tab-separated fields, want 3`},
		{"not a number", "runc\ttotal\t0.4\nrunc\ttotal\tfast\n", nil, exitFailure, `stdin:2: "runc\ttotal\tfast": seconds "fast" is not a finite number`},
		{"NaN", "runc\ttotal\tNaN\n", nil, exitFailure, "not a finite number"},
		{"empty label", " \ttotal\t1\n", nil, exitFailure, "empty label or name"},
		{"overlong line", "runc\ttotal\t" + strings.Repeat("1", maxLineBytes) + "\n", nil, exitFailure, "stdin:1: line longer than 64 KiB"},
		{"no lines", "# nothing\n\n", nil, exitFailure, "no LABEL<TAB>NAME<TAB>SECONDS lines"},
		{"missing file", "", []string{"/nonexistent/runs.tsv"}, exitFailure, "open /nonexistent/runs.tsv"},
		{"bad output", "", []string{"--output", "tsv"}, exitUsage, `--output "tsv": want text or json`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runT(t, tt.stdin, append([]string{"median"}, tt.args...)...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d (want %d), stderr:\n%s\nwant it to contain %q", code, tt.code, errOut, tt.want)
			}
		})
	}
}
