package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	podline "github.com/cloak-containers/cloak/api/timeline"
)

// maxLineBytes bounds one log line. containerd's log is copied raw from every
// shim and plugin, so a line may be anything; a longer one is skipped whole.
const maxLineBytes = 64 << 10

// timelineMsg is the msg of the shim's one line per started container.
const timelineMsg = podline.Msg

// parseLine returns the key=value fields of one logrus text-format line.
// Values are bare up to the next space, or quoted as logrus quotes them
// (strconv.Quote), so strconv undoes the quoting exactly. Words that are not
// key=value (a journald or syslog prefix, free text) are skipped; a quoted
// value that does not end ends the line. The first of repeated keys wins.
func parseLine(line string) map[string]string {
	fields := map[string]string{}
	s := line
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		if s == "" {
			return fields
		}
		word := s[:wordEnd(s)]
		eq := strings.IndexByte(word, '=')
		if eq <= 0 || strings.ContainsAny(word[:eq], `"`) {
			s = s[len(word):]
			continue
		}
		key, rest := word[:eq], s[eq+1:]
		var value string
		if strings.HasPrefix(rest, `"`) {
			quoted, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return fields
			}
			// QuotedPrefix accepted it, so Unquote cannot fail.
			value, _ = strconv.Unquote(quoted)
			rest = rest[len(quoted):]
		} else {
			n := wordEnd(rest)
			value, rest = rest[:n], rest[n:]
		}
		if _, dup := fields[key]; !dup {
			fields[key] = value
		}
		s = rest
	}
}

func wordEnd(s string) int {
	if i := strings.IndexAny(s, " \t\r\n"); i >= 0 {
		return i
	}
	return len(s)
}

// podStart is one timeline line of the shim.
type podStart struct {
	line   int // in the log, from 1
	fields map[string]string
}

func (p podStart) container() string { return p.fields[podline.Container] }

// readTimelines returns the timeline lines of a containerd log in log order
// and how many overlong lines were skipped.
func readTimelines(r io.Reader) (starts []podStart, skipped int, err error) {
	br := bufio.NewReaderSize(r, maxLineBytes)
	marker := []byte(timelineMsg)
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			skipped++
			if err := discardLine(br); err != nil {
				return starts, skipped, err
			}
			continue
		}
		if len(line) > 0 && bytes.Contains(line, marker) {
			fields := parseLine(string(line))
			if fields["msg"] == timelineMsg {
				starts = append(starts, podStart{line: lineNo, fields: fields})
			}
		}
		if err == io.EOF {
			return starts, skipped, nil
		}
		if err != nil {
			return starts, skipped, fmt.Errorf("line %d: %w", lineNo, err)
		}
	}
}

// discardLine drops the rest of a line that did not fit the buffer.
func discardLine(br *bufio.Reader) error {
	for {
		_, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF {
			return nil
		}
		return err
	}
}

// timeField returns a host time of the line. A missing, empty or zero time
// is absent; a malformed one is absent with a problem to report.
func (p podStart) timeField(key string) (t time.Time, ok bool, problem string) {
	v, present := p.fields[key]
	if !present || v == "" {
		return time.Time{}, false, ""
	}
	t, err := podline.ParseTime(v)
	if err != nil {
		return time.Time{}, false, fmt.Sprintf("%s=%q is not an RFC 3339 time", key, v)
	}
	if t.IsZero() {
		return time.Time{}, false, ""
	}
	return t, true, ""
}

// usField returns a guest duration (*_us, microseconds) of the line.
func (p podStart) usField(key string) (d time.Duration, ok bool, problem string) {
	v, present := p.fields[key]
	if !present || v == "" {
		return 0, false, ""
	}
	us, err := strconv.ParseInt(v, 10, 64)
	// Bounded so that the conversion to nanoseconds cannot overflow.
	if err != nil || us < 0 || us > int64(time.Duration(1<<62)/time.Microsecond) {
		return 0, false, fmt.Sprintf("%s=%q is not a count of microseconds", key, v)
	}
	return time.Duration(us) * time.Microsecond, true, ""
}
