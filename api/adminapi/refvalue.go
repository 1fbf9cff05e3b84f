package adminapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Reference value limits, the same for every client: the KBS refuses more.
const (
	MaxReferenceValues    = 1024    // values of one name in one request
	MaxReferenceValueSize = 1 << 10 // bytes of one value
	// MaxReferenceFileSize bounds an unsigned reference-value file
	// (kbsctl reference-value import FILE.json).
	MaxReferenceFileSize = 1 << 20
)

var referenceNameRE = regexp.MustCompile(`^[a-z0-9_]{1,64}$`)

// ReferenceKind says what the values of a known reference value look like.
type ReferenceKind struct {
	// Hex values are lowercase hex of one of these byte lengths (the
	// verifiers' claims are lowercase hex, so "AB" never matches "ab").
	HexLengths []int
	// Decimal values are decimal digits; MaxNumber > 0 bounds their value.
	Decimal   bool
	MaxNumber uint64
	// OneOf lists the only accepted values.
	OneOf []string
	// Claim is the evidence claim the default policy compares it with.
	Claim string
}

func (k ReferenceKind) String() string {
	switch {
	case len(k.HexLengths) > 0:
		n := make([]string, len(k.HexLengths))
		for i, l := range k.HexLengths {
			n[i] = strconv.Itoa(2 * l)
		}
		return fmt.Sprintf("lowercase hex of %s digits", strings.Join(n, " or "))
	case k.MaxNumber > 0:
		return fmt.Sprintf("a decimal number 0-%d", k.MaxNumber)
	case k.Decimal:
		return "decimal digits"
	default:
		return "one of " + strings.Join(k.OneOf, ", ")
	}
}

// tdxTCBStatuses are Intel's TCB statuses (go-tdx-guest pcs) and Cloak's
// NotSupported (kbs/verifier/tdx, no matching TCB level).
var tdxTCBStatuses = []string{"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
	"ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked", "NotSupported"}

// KnownReferenceValues are the names policy/default_attestation.rego reads,
// each with the shape of the claim it is compared with (kbs/verifier/...).
// Any other name is custom: a policy of the admin's own (Trustee's
// sample policy reads "svn") may need it, so it is accepted only when the
// request says so (ReferenceValue.Custom), which keeps typos out.
var KnownReferenceValues = func() map[string]ReferenceKind {
	m := map[string]ReferenceKind{
		// kbstypes.InitdataDigest: sha256, sha384 or sha512 of the document.
		"init_data": {HexLengths: []int{32, 48, 64}, Claim: "init_data"},
		// kbs/verifier/sample: the evidence's svn string, digits in practice.
		"sample_svn": {Decimal: true, Claim: "sample.svn"},
		// The sample TEE reports no launch digest yet: a sha256 or sha384.
		"sample_launch_digest": {HexLengths: []int{32, 48}, Claim: "sample.launch_digest"},
		// SEV-SNP ABI, ATTESTATION_REPORT: MEASUREMENT 48 bytes, HOST_DATA 32.
		"snp_launch_measurement": {HexLengths: []int{48}, Claim: "snp.measurement"},
		"snp_host_data":          {HexLengths: []int{32}, Claim: "snp.host_data"},
		// TDX quote v4 TD report: MRTD and RTMR0-3 are SHA-384, 48 bytes.
		"tdx_mr_td":      {HexLengths: []int{48}, Claim: "tdx.mr_td"},
		"tdx_tcb_status": {OneOf: tdxTCBStatuses, Claim: "tdx.tcb_status"},
	}
	// SNP TCB_VERSION: each SPL is one byte.
	for _, part := range []string{"bootloader", "tee", "snp", "microcode"} {
		m["snp_minimum_tcb_"+part] = ReferenceKind{Decimal: true, MaxNumber: 255, Claim: "snp.reported_tcb." + part}
	}
	for i := range 4 {
		m[fmt.Sprintf("tdx_rtmr%d", i)] = ReferenceKind{HexLengths: []int{48}, Claim: fmt.Sprintf("tdx.rtmr%d", i)}
	}
	// kbs/verifier/tpm: the sha256 bank's PCRs 0-23.
	for i := range 24 {
		m[fmt.Sprintf("tpm_pcr%02d", i)] = ReferenceKind{HexLengths: []int{32}, Claim: fmt.Sprintf("tpm.pcr%02d", i)}
	}
	return m
}()

// ReferenceValueError says which reference value was refused and why.
type ReferenceValueError struct {
	Name    string
	Index   int // of the refused value; -1 when the name or list is at fault
	Problem string
	err     error // a sentinel it matches, if any
}

func (e *ReferenceValueError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("reference value %q: %s", e.Name, e.Problem)
	}
	return fmt.Sprintf("reference value %s[%d]: %s", e.Name, e.Index, e.Problem)
}

func (e *ReferenceValueError) Unwrap() error { return e.err }

// ErrNoValues is matched (errors.Is) by a refusal of an empty value list,
// which used to delete the name.
var ErrNoValues = errors.New("no values")

// CheckReferenceName refuses a malformed name and, unless custom, one the
// default policy does not read, naming the closest known one.
func CheckReferenceName(name string, custom bool) error {
	if !referenceNameRE.MatchString(name) {
		return &ReferenceValueError{Name: name, Index: -1, Problem: "invalid name: use 1-64 characters of [a-z0-9_]"}
	}
	if _, ok := KnownReferenceValues[name]; ok {
		if custom {
			return &ReferenceValueError{Name: name, Index: -1, Problem: "is a known name, not a custom one: leave out custom"}
		}
		return nil
	}
	if custom {
		return nil
	}
	p := "unknown reference value"
	if s := closestReferenceName(name); s != "" {
		p += fmt.Sprintf(": did you mean %q?", s)
	}
	return &ReferenceValueError{Name: name, Index: -1, Problem: p + " (a name only your own policy reads is custom: kbsctl --custom, API \"custom\": true)"}
}

// CheckReferenceValue checks one value of a name. Custom values are only
// checked for size and characters: their meaning is the admin's policy's.
func CheckReferenceValue(name string, i int, v string) error {
	bad := func(format string, args ...any) error {
		return &ReferenceValueError{Name: name, Index: i, Problem: fmt.Sprintf(format, args...)}
	}
	if v == "" {
		return bad("is empty")
	}
	if len(v) > MaxReferenceValueSize {
		return bad("is %d bytes, limit is %d", len(v), MaxReferenceValueSize)
	}
	if strings.TrimSpace(v) != v {
		return bad("%q has leading or trailing white space", v)
	}
	k, ok := KnownReferenceValues[name]
	if !ok {
		return nil
	}
	switch {
	case len(k.HexLengths) > 0:
		if lower := strings.ToLower(v); lower != v && isHex(lower) {
			return bad("%q has upper-case hex: the %s claim is lowercase, write %q", v, k.Claim, lower)
		}
		if !isHex(v) {
			return bad("%q is not hex: want %s", v, k)
		}
		if !slices.Contains(k.HexLengths, len(v)/2) {
			return bad("has %d hex digits (%d bytes): want %s", len(v), len(v)/2, k)
		}
	case k.Decimal:
		if strings.Trim(v, "0123456789") != "" {
			return bad("%q is not a decimal number: want %s", v, k)
		}
		if n, err := strconv.ParseUint(v, 10, 64); k.MaxNumber > 0 && (err != nil || n > k.MaxNumber) {
			return bad("%q is out of range: want %s", v, k)
		}
	default:
		if !slices.Contains(k.OneOf, v) {
			return bad("%q: want %s", v, k)
		}
	}
	return nil
}

// CheckReferenceValues checks a whole request: the name, at least one
// value, at most MaxReferenceValues, each well formed and none twice.
func CheckReferenceValues(rv ReferenceValue) error {
	if err := CheckReferenceName(rv.Name, rv.Custom); err != nil {
		return err
	}
	if len(rv.Values) == 0 {
		return &ReferenceValueError{Name: rv.Name, Index: -1, err: ErrNoValues, Problem: "no values given: to delete the name use " +
			"kbsctl reference-value delete NAME (DELETE " + PathReferenceValues + "/NAME), to drop some values kbsctl reference-value remove NAME VALUE..."}
	}
	if len(rv.Values) > MaxReferenceValues {
		return &ReferenceValueError{Name: rv.Name, Index: -1, Problem: fmt.Sprintf("has %d values, limit is %d", len(rv.Values), MaxReferenceValues)}
	}
	seen := make(map[string]bool, len(rv.Values))
	for i, v := range rv.Values {
		if err := CheckReferenceValue(rv.Name, i, v); err != nil {
			return err
		}
		if seen[v] {
			return &ReferenceValueError{Name: rv.Name, Index: i, Problem: fmt.Sprintf("%q is listed twice", v)}
		}
		seen[v] = true
	}
	return nil
}

// ParseReferenceFile parses an unsigned reference-value file: a JSON object
// of name -> list of values (what kbsctl evidence verify --reference-values
// reads, and GET /kbs/v0/reference-values answers under reference_values).
// Names are checked as CheckReferenceValues does; custom allows unknown
// names. The result is sorted by name.
func ParseReferenceFile(data []byte, custom bool) ([]ReferenceValue, error) {
	if len(data) > MaxReferenceFileSize {
		return nil, fmt.Errorf("reference-value file is %d bytes, limit is %d", len(data), MaxReferenceFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var m map[string][]string
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("reference-value file: want a JSON object of name -> list of strings: %w", err)
	}
	if dec.More() {
		return nil, errors.New("reference-value file: data after the JSON object")
	}
	if len(m) == 0 {
		return nil, errors.New("reference-value file names no reference value")
	}
	out := make([]ReferenceValue, 0, len(m))
	for name, values := range m {
		_, known := KnownReferenceValues[name]
		rv := ReferenceValue{Name: name, Values: values, Custom: custom && !known}
		if err := CheckReferenceValues(rv); err != nil {
			return nil, err
		}
		out = append(out, rv)
	}
	slices.SortFunc(out, func(a, b ReferenceValue) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func isHex(s string) bool {
	if len(s) == 0 || len(s)%2 != 0 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// closestReferenceName is the known name nearest to name by edit distance,
// if it is near enough to be a typo (at most a third of its length).
func closestReferenceName(name string) string {
	best, bestD := "", len(name)/3+1
	for k := range KnownReferenceValues {
		if d := editDistance(name, k); d < bestD || (d == bestD && best != "" && k < best) {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
