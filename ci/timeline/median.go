package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// samples gathers LABEL<TAB>NAME<TAB>SECONDS lines, keeping labels and
// names in order of first appearance.
type samples struct {
	labels []string
	names  []string
	values map[string]map[string][]float64 // label -> name -> seconds
}

func newSamples() *samples { return &samples{values: map[string]map[string][]float64{}} }

// read adds the lines of one file; source names it in errors. Blank lines
// and lines starting with '#' are ignored.
func (s *samples) read(r io.Reader, source string) error {
	br := bufio.NewReaderSize(r, maxLineBytes)
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return fmt.Errorf("%s:%d: line longer than %d KiB: want LABEL<TAB>NAME<TAB>SECONDS", source, lineNo, maxLineBytes>>10)
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("%s:%d: %w", source, lineNo, err)
		}
		if text := strings.TrimRight(string(line), "\r\n"); strings.TrimSpace(text) != "" && !strings.HasPrefix(text, "#") {
			if perr := s.add(text); perr != nil {
				return fmt.Errorf("%s:%d: %w", source, lineNo, perr)
			}
		}
		if err == io.EOF {
			return nil
		}
	}
}

func (s *samples) add(text string) error {
	f := strings.Split(text, "\t")
	if len(f) != 3 {
		return fmt.Errorf("%q has %d tab-separated fields, want 3: LABEL<TAB>NAME<TAB>SECONDS", text, len(f))
	}
	label, name := strings.TrimSpace(f[0]), strings.TrimSpace(f[1])
	if label == "" || name == "" {
		return fmt.Errorf("%q has an empty label or name, want LABEL<TAB>NAME<TAB>SECONDS", text)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(f[2]), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("%q: seconds %q is not a finite number", text, f[2])
	}
	byName, ok := s.values[label]
	if !ok {
		byName = map[string][]float64{}
		s.values[label] = byName
		s.labels = append(s.labels, label)
	}
	if !s.hasName(name) {
		s.names = append(s.names, name)
	}
	byName[name] = append(byName[name], v)
	return nil
}

func (s *samples) hasName(name string) bool {
	for _, n := range s.names {
		if n == name {
			return true
		}
	}
	return false
}

// stat summarises the values of one name under one label.
type stat struct {
	Name   string  `json:"name"`
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// labelStats is one column of the median table.
type labelStats struct {
	Label string `json:"label"`
	// N is the number of runs: the count of "total" lines, else the most
	// values any name has.
	N      int    `json:"n"`
	Phases []stat `json:"phases"`
}

func summarise(values []float64) (median, lo, hi float64) {
	v := append([]float64(nil), values...)
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		median = v[n/2]
	} else {
		median = (v[n/2-1] + v[n/2]) / 2
	}
	return median, v[0], v[n-1]
}

func (s *samples) stats() []labelStats {
	out := make([]labelStats, 0, len(s.labels))
	for _, label := range s.labels {
		ls := labelStats{Label: label, Phases: []stat{}}
		for _, name := range s.names {
			vals := s.values[label][name]
			if len(vals) == 0 {
				continue
			}
			st := stat{Name: name, N: len(vals)}
			st.Median, st.Min, st.Max = summarise(vals)
			ls.Phases = append(ls.Phases, st)
			if name == "total" {
				ls.N = len(vals)
			}
		}
		if len(s.values[label]["total"]) == 0 {
			for _, st := range ls.Phases {
				ls.N = max(ls.N, st.N)
			}
		}
		out = append(out, ls)
	}
	return out
}

// writeMedianText prints labels as columns and names as rows:
// "median [min-max]", with the cell's own n when it differs from the
// label's, and "-" where a label has no such name.
func writeMedianText(w io.Writer, s *samples) error {
	stats := s.stats()
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	header := []string{"phase"}
	for _, ls := range stats {
		header = append(header, fmt.Sprintf("%s (n=%d)", ls.Label, ls.N))
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, name := range s.names {
		row := []string{name}
		for _, ls := range stats {
			row = append(row, cell(ls, name))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

func cell(ls labelStats, name string) string {
	for _, st := range ls.Phases {
		if st.Name != name {
			continue
		}
		c := fmt.Sprintf("%.3f [%.3f-%.3f]", st.Median, st.Min, st.Max)
		if st.N != ls.N {
			c += fmt.Sprintf(" n=%d", st.N)
		}
		return c
	}
	return "-"
}
