package main

import (
	"bytes"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

func TestParseLine(t *testing.T) {
	tests := []struct {
		name string
		line string
		want map[string]string
	}{
		{"unquoted", `level=info container=4f1c n=42`, map[string]string{"level": "info", "container": "4f1c", "n": "42"}},
		{"quoted with spaces and colons", `msg="pod start timeline" image="10.88.0.1:5000/demo/secret:1"`,
			map[string]string{"msg": "pod start timeline", "image": "10.88.0.1:5000/demo/secret:1"}},
		{"escapes", `msg="say \"hi\"\tthen\\leave\n" x="caf\u00e9\x00"`,
			map[string]string{"msg": "say \"hi\"\tthen\\leave\n", "x": "café\x00"}},
		{"empty values", `a= b="" c=1`, map[string]string{"a": "", "b": "", "c": "1"}},
		{"journald prefix is skipped", `Nov 27 12:00:05 host containerd[812]: time="2026-11-27T12:00:05Z" level=info msg=x`,
			map[string]string{"time": "2026-11-27T12:00:05Z", "level": "info", "msg": "x"}},
		{"garbage", `W1127 11:59:59.5 123 klog.go:42] not logrus at all`, map[string]string{}},
		{"empty line", "", map[string]string{}},
		{"whitespace only", " \t\r\n", map[string]string{}},
		{"word starting with =", `=x a=1`, map[string]string{"a": "1"}},
		{"quote in a key is not a key", `"k=v" a"b=1 c=2`, map[string]string{"c": "2"}},
		{"unterminated quote ends the line", `a=1 msg="never ends b=2`, map[string]string{"a": "1"}},
		{"first of repeated keys wins", `a=1 a=2 a="3"`, map[string]string{"a": "1"}},
		{"value runs to the next blank", `a=x"y b=2`, map[string]string{"a": `x"y`, "b": "2"}},
		{"tabs and CRLF", "a=1\tb=\"x y\"\r\n", map[string]string{"a": "1", "b": "x y"}},
		{"missing timeline fields", `time="2026-11-27T12:00:05Z" level=info msg="pod start timeline" container=c1`,
			map[string]string{"time": "2026-11-27T12:00:05Z", "level": "info", "msg": timelineMsg, "container": "c1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseLine(tt.line); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseLine(%q)\n got %q\nwant %q", tt.line, got, tt.want)
			}
		})
	}
}

// TestParseLogrusLine parses what logrus itself writes, as the shim does.
func TestParseLogrusLine(t *testing.T) {
	var buf bytes.Buffer
	l := logrus.New()
	l.Out = &buf
	l.Formatter = &logrus.TextFormatter{TimestampFormat: time.RFC3339Nano, FullTimestamp: true}
	odd := "a \"quoted\" value\twith\\escapes and é and \x01"
	l.WithFields(logrus.Fields{
		"container": "4f1c", "image": "10.88.0.1:5000/demo/secret:1", "encrypted": true, "fetch_us": int64(200000),
		"pull_done": "2026-11-27T12:00:05.4Z", "odd": odd, "empty": "",
	}).Info(timelineMsg)
	got := parseLine(buf.String())
	for k, want := range map[string]string{
		"level": "info", "msg": timelineMsg, "container": "4f1c", "image": "10.88.0.1:5000/demo/secret:1",
		"encrypted": "true", "fetch_us": "200000", "pull_done": "2026-11-27T12:00:05.4Z", "odd": odd, "empty": "",
	} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q (line %q)", k, got[k], want, buf.String())
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, got["time"]); err != nil {
		t.Errorf("time %q: %v", got["time"], err)
	}
}

func TestReadTimelines(t *testing.T) {
	long := "time=x level=info msg=\"pod start timeline\" container=huge pad=" + strings.Repeat("x", 2*maxLineBytes) + "\n"
	log := "not logrus\n" +
		long +
		`level=info msg="pod start timeline" container=c1` + "\n" +
		`level=info msg="pod start timeline, not quite" container=c2` + "\n" +
		`level=info msg=other note="pod start timeline" container=c3` + "\n" +
		strings.Repeat("y", maxLineBytes+1) + "\n" +
		`level=info msg="pod start timeline" container=c4` // no final newline
	starts, skipped, err := readTimelines(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if skipped != 2 {
		t.Errorf("skipped %d overlong lines, want 2", skipped)
	}
	var got []string
	for _, s := range starts {
		got = append(got, s.container()+"@"+strconv.Itoa(s.line))
	}
	if want := []string{"c1@3", "c4@7"}; !reflect.DeepEqual(got, want) {
		t.Errorf("timelines %v, want %v", got, want)
	}
}

func TestFields(t *testing.T) {
	p := podStart{fields: parseLine(`a="2026-11-27T12:00:05.4Z" zero="0001-01-01T00:00:00Z" bad=yesterday ` +
		`us=1500 neg=-1 word=ten huge=99999999999999999999 empty=`)}
	if tm, ok, problem := p.timeField("a"); !ok || problem != "" || !tm.Equal(time.Date(2026, 11, 27, 12, 0, 5, 4e8, time.UTC)) {
		t.Errorf("a = %v %v %q", tm, ok, problem)
	}
	for _, key := range []string{"zero", "missing", "empty"} {
		if _, ok, problem := p.timeField(key); ok || problem != "" {
			t.Errorf("%s: want absent without a problem, got %v %q", key, ok, problem)
		}
	}
	if _, ok, problem := p.timeField("bad"); ok || !strings.Contains(problem, `bad="yesterday"`) {
		t.Errorf("bad: want a problem, got %v %q", ok, problem)
	}
	if d, ok, _ := p.usField("us"); !ok || d != 1500*time.Microsecond {
		t.Errorf("us = %v %v", d, ok)
	}
	for _, key := range []string{"neg", "word", "huge"} {
		if _, ok, problem := p.usField(key); ok || problem == "" {
			t.Errorf("%s: want a problem, got %v %q", key, ok, problem)
		}
	}
	if _, ok, problem := p.usField("missing"); ok || problem != "" {
		t.Errorf("missing: %v %q", ok, problem)
	}
}

func FuzzParseLine(f *testing.F) {
	f.Add(`time="2026-11-27T12:00:05.9Z" level=info msg="pod start timeline" container=4f1c image="10.88.0.1:5000/x:1"`)
	f.Add(`a="\"\\\x00\u00e9" b= ="" "k=v`)
	f.Add(`msg="unterminated`)
	f.Add("\xff\xfe=\x00 a=\"\xff\"")
	f.Fuzz(func(t *testing.T, line string) {
		fields := parseLine(line)
		for k := range fields {
			if k == "" || strings.ContainsAny(k, " \t\r\n\"=") {
				t.Errorf("parseLine(%q) has key %q", line, k)
			}
		}
		// Any string logrus quotes comes back whole, among other fields.
		quoted := `level=info k=` + strconv.Quote(line) + ` after=1`
		got := parseLine(quoted)
		if got["k"] != line || got["after"] != "1" || got["level"] != "info" {
			t.Errorf("parseLine(%q) = %q, want k=%q", quoted, got, line)
		}
	})
}
