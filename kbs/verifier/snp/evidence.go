package snp

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
)

// MaxEvidenceSize bounds the evidence document. Trustee's JSON spells every
// byte as a number: a report is ~5 KiB and a full certificate table ~40 KiB.
const MaxEvidenceSize = 256 << 10

// maxCertTable bounds a raw certificate table (kbsctl input).
const maxCertTable = 64 << 10

// Evidence is what an SNP guest sends as primary evidence, as Trustee's
// guest-components attester serializes it (serde of the sev crate's
// AttestationReport and CertTableEntry). AttestationReport may also be a
// string: base64 (or hex) of the 1184-byte report, which Cloak's own attester
// sends because it is lossless across sev crate versions.
type Evidence struct {
	AttestationReport json.RawMessage `json:"attestation_report"`
	CertChain         []CertEntry     `json:"cert_chain"`
}

// CertEntry is one certificate table entry. CertType is "ARK", "ASK", "VCEK",
// "VLEK", "ASVK", "CRL", "Empty" or {"OTHER":"<guid>"}; Data is DER bytes as
// a JSON array of numbers (serde) or a base64 string.
type CertEntry struct {
	CertType json.RawMessage `json:"cert_type"`
	Data     json.RawMessage `json:"data"`
}

// ParseEvidence decodes evidence JSON into the raw 1184-byte report and a
// certificate chain (empty if the evidence carries none).
func ParseEvidence(evidence []byte) ([]byte, *spb.CertificateChain, error) {
	if len(evidence) > MaxEvidenceSize {
		return nil, nil, fmt.Errorf("evidence is %d bytes, limit is %d", len(evidence), MaxEvidenceSize)
	}
	var ev Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		return nil, nil, fmt.Errorf("want {\"attestation_report\":...,\"cert_chain\":[...]}: %w", err)
	}
	if len(ev.AttestationReport) == 0 || string(ev.AttestationReport) == "null" {
		return nil, nil, errors.New(`field "attestation_report" is missing`)
	}
	raw, err := reportBytes(ev.AttestationReport)
	if err != nil {
		return nil, nil, fmt.Errorf("field \"attestation_report\": %w", err)
	}
	chain := &spb.CertificateChain{Extras: map[string][]byte{}}
	for i, e := range ev.CertChain {
		if err := addCert(chain, e); err != nil {
			return nil, nil, fmt.Errorf("cert_chain[%d]: %w", i, err)
		}
	}
	return raw, chain, nil
}

// ParseRaw splits a raw report optionally followed by the extended-report
// certificate table (GUID table, as /dev/sev-guest and configfs-tsm return it).
func ParseRaw(data []byte) ([]byte, *spb.CertificateChain, error) {
	if len(data) < abi.ReportSize {
		return nil, nil, fmt.Errorf("an SNP report is %d bytes, got %d", abi.ReportSize, len(data))
	}
	chain := &spb.CertificateChain{Extras: map[string][]byte{}}
	rest := data[abi.ReportSize:]
	if len(rest) > maxCertTable {
		return nil, nil, fmt.Errorf("certificate table after the report is %d bytes, limit is %d", len(rest), maxCertTable)
	}
	if len(rest) > 0 && !allZero(rest) {
		var table abi.CertTable
		if err := table.Unmarshal(rest); err != nil {
			return nil, nil, fmt.Errorf("bytes after the %d-byte report are not a certificate table: %w", abi.ReportSize, err)
		}
		chain = table.Proto()
	}
	return data[:abi.ReportSize:abi.ReportSize], chain, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func addCert(chain *spb.CertificateChain, e CertEntry) error {
	data, err := bytesField(e.Data, -1)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	var name string
	if err := json.Unmarshal(e.CertType, &name); err != nil {
		var other struct {
			Other string `json:"OTHER"`
		}
		if err := json.Unmarshal(e.CertType, &other); err != nil || other.Other == "" {
			return fmt.Errorf("cert_type %s is neither a name nor {\"OTHER\":guid}", e.CertType)
		}
		chain.Extras[strings.ToLower(other.Other)] = data
		return nil
	}
	switch strings.ToUpper(name) {
	case "VCEK":
		chain.VcekCert = data
	case "VLEK":
		chain.VlekCert = data
	case "ASK":
		chain.AskCert = data
	case "ARK":
		chain.ArkCert = data
	case "ASVK":
		chain.Extras[abi.AsvkGUID] = data
	case "EMPTY", "CRL":
		// Not used for verification: the CRL is fetched from KDS and checked
		// against the trusted ARK.
	default:
		return fmt.Errorf("unknown cert_type %q", name)
	}
	return nil
}

// reportBytes accepts a string (base64 or hex of the raw report) or the sev
// crate's serde object and returns the raw report.
func reportBytes(v json.RawMessage) ([]byte, error) {
	v = bytes.TrimSpace(v)
	if len(v) > 0 && v[0] == '"' {
		b, err := bytesField(v, abi.ReportSize)
		if err != nil {
			return nil, err
		}
		return b, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(v, &obj); err != nil {
		return nil, fmt.Errorf("want a string (base64 of the %d-byte report) or an object: %w", abi.ReportSize, err)
	}
	return encodeReportObject(obj)
}

// bytesField decodes a byte string written as a JSON array of numbers, or a
// hex or base64 string. n >= 0 requires that length.
func bytesField(v json.RawMessage, n int) ([]byte, error) {
	var out []byte
	var s string
	if err := json.Unmarshal(v, &s); err == nil {
		if b, err := hex.DecodeString(s); err == nil && (n < 0 || len(b) == n) && len(s) > 0 {
			out = b
		} else if b, err := base64.StdEncoding.DecodeString(s); err == nil {
			out = b
		} else {
			return nil, errors.New("string is neither hex nor standard base64")
		}
	} else {
		var nums []uint8
		if err := json.Unmarshal(v, &nums); err != nil {
			return nil, fmt.Errorf("want an array of bytes or a base64 string: %w", err)
		}
		out = nums
	}
	if n >= 0 && len(out) != n {
		return nil, fmt.Errorf("is %d bytes, want %d", len(out), n)
	}
	return out, nil
}

// field is one member of the sev crate's AttestationReport serialization
// with its place in the binary report. Reserved members may be absent (they
// are then zero); newer sev crates renamed some members, listed as aliases.
type field struct {
	names []string
	off   int
	size  int
	kind  byte // 'u' little-endian integer, 'b' bytes, 't' TCB, 'v' version, 's' signature
}

var reportLayout = []field{
	{[]string{"version"}, 0x000, 4, 'u'},
	{[]string{"guest_svn"}, 0x004, 4, 'u'},
	{[]string{"policy"}, 0x008, 8, 'u'},
	{[]string{"family_id"}, 0x010, 16, 'b'},
	{[]string{"image_id"}, 0x020, 16, 'b'},
	{[]string{"vmpl"}, 0x030, 4, 'u'},
	{[]string{"sig_algo"}, 0x034, 4, 'u'},
	{[]string{"current_tcb"}, 0x038, 8, 't'},
	{[]string{"plat_info"}, 0x040, 8, 'u'},
	{[]string{"_author_key_en", "key_info"}, 0x048, 4, 'u'},
	{[]string{"_reserved_0"}, 0x04c, 4, 'u'},
	{[]string{"report_data"}, 0x050, 64, 'b'},
	{[]string{"measurement"}, 0x090, 48, 'b'},
	{[]string{"host_data"}, 0x0c0, 32, 'b'},
	{[]string{"id_key_digest"}, 0x0e0, 48, 'b'},
	{[]string{"author_key_digest"}, 0x110, 48, 'b'},
	{[]string{"report_id"}, 0x140, 32, 'b'},
	{[]string{"report_id_ma"}, 0x160, 32, 'b'},
	{[]string{"reported_tcb"}, 0x180, 8, 't'},
	{[]string{"_reserved_1"}, 0x188, 24, 'b'},
	{[]string{"cpuid_fam_id"}, 0x188, 1, 'u'},
	{[]string{"cpuid_mod_id"}, 0x189, 1, 'u'},
	{[]string{"cpuid_step"}, 0x18a, 1, 'u'},
	{[]string{"chip_id"}, 0x1a0, 64, 'b'},
	{[]string{"committed_tcb"}, 0x1e0, 8, 't'},
	{[]string{"current_build"}, 0x1e8, 1, 'u'},
	{[]string{"current_minor"}, 0x1e9, 1, 'u'},
	{[]string{"current_major"}, 0x1ea, 1, 'u'},
	{[]string{"current"}, 0x1e8, 3, 'v'},
	{[]string{"_reserved_2"}, 0x1eb, 1, 'u'},
	{[]string{"committed_build"}, 0x1ec, 1, 'u'},
	{[]string{"committed_minor"}, 0x1ed, 1, 'u'},
	{[]string{"committed_major"}, 0x1ee, 1, 'u'},
	{[]string{"committed"}, 0x1ec, 3, 'v'},
	{[]string{"_reserved_3"}, 0x1ef, 1, 'u'},
	{[]string{"launch_tcb"}, 0x1f0, 8, 't'},
	{[]string{"_reserved_4"}, 0x1f8, 168, 'b'},
	{[]string{"launch_mit_vector"}, 0x1f8, 8, 'u'},
	{[]string{"current_mit_vector"}, 0x200, 8, 'u'},
	{[]string{"signature"}, 0x2a0, 512, 's'},
}

// required members: without them the object is not an attestation report.
var requiredMembers = []string{"version", "policy", "report_data", "measurement", "reported_tcb", "chip_id", "signature"}

func encodeReportObject(obj map[string]json.RawMessage) ([]byte, error) {
	for _, name := range requiredMembers {
		if _, ok := obj[name]; !ok {
			return nil, fmt.Errorf("member %q is missing", name)
		}
	}
	out := make([]byte, abi.ReportSize)
	for _, f := range reportLayout {
		for _, name := range f.names {
			v, ok := obj[name]
			if !ok || string(v) == "null" {
				continue
			}
			if err := putField(out[f.off:f.off+f.size], f.kind, v); err != nil {
				return nil, fmt.Errorf("member %q: %w", name, err)
			}
		}
	}
	return out, nil
}

func putField(dst []byte, kind byte, v json.RawMessage) error {
	switch kind {
	case 'u':
		var n uint64
		if err := json.Unmarshal(v, &n); err != nil {
			return err
		}
		if len(dst) < 8 && n>>(8*len(dst)) != 0 {
			return fmt.Errorf("%d does not fit in %d bytes", n, len(dst))
		}
		var buf [8]byte
		binary.LittleEndian.PutUint64(buf[:], n)
		copy(dst, buf[:len(dst)])
	case 'b':
		b, err := bytesField(v, len(dst))
		if err != nil {
			return err
		}
		copy(dst, b)
	case 't':
		var t struct {
			Fmc        *uint8  `json:"fmc"`
			Bootloader uint8   `json:"bootloader"`
			Tee        uint8   `json:"tee"`
			Reserved   []uint8 `json:"_reserved"`
			Snp        uint8   `json:"snp"`
			Microcode  uint8   `json:"microcode"`
		}
		if err := json.Unmarshal(v, &t); err != nil {
			var raw uint64
			if err2 := json.Unmarshal(v, &raw); err2 != nil {
				return err
			}
			binary.LittleEndian.PutUint64(dst, raw)
			return nil
		}
		if t.Fmc != nil { // Turin layout
			dst[0], dst[1], dst[2], dst[3], dst[7] = *t.Fmc, t.Bootloader, t.Tee, t.Snp, t.Microcode
			return nil
		}
		if len(t.Reserved) > 4 {
			return errors.New("_reserved is longer than 4 bytes")
		}
		dst[0], dst[1], dst[6], dst[7] = t.Bootloader, t.Tee, t.Snp, t.Microcode
		copy(dst[2:6], t.Reserved)
	case 'v':
		var ver struct{ Major, Minor, Build uint8 }
		if err := json.Unmarshal(v, &ver); err != nil {
			return err
		}
		dst[0], dst[1], dst[2] = ver.Build, ver.Minor, ver.Major
	case 's':
		var sig struct {
			R        json.RawMessage `json:"r"`
			S        json.RawMessage `json:"s"`
			Reserved json.RawMessage `json:"_reserved"`
		}
		if err := json.Unmarshal(v, &sig); err != nil {
			return err
		}
		r, err := bytesField(sig.R, 72)
		if err != nil {
			return fmt.Errorf("r: %w", err)
		}
		s, err := bytesField(sig.S, 72)
		if err != nil {
			return fmt.Errorf("s: %w", err)
		}
		copy(dst[0:72], r)
		copy(dst[72:144], s)
		if len(sig.Reserved) > 0 && string(sig.Reserved) != "null" {
			rest, err := bytesField(sig.Reserved, 368)
			if err != nil {
				return fmt.Errorf("_reserved: %w", err)
			}
			copy(dst[144:], rest)
		}
	}
	return nil
}

// EvidenceJSON renders a raw report and certificate table entries in
// Trustee's evidence format (serde of the sev crate, every byte a number),
// the inverse of ParseEvidence. kbsctl and tests use it.
func EvidenceJSON(report []byte, chain *spb.CertificateChain) ([]byte, error) {
	if len(report) != abi.ReportSize {
		return nil, fmt.Errorf("an SNP report is %d bytes, got %d", abi.ReportSize, len(report))
	}
	obj := map[string]any{}
	for _, f := range reportLayout {
		if f.names[0] != "_reserved_1" && (f.off == 0x188 && f.size == 1 || f.names[0] == "current" ||
			f.names[0] == "committed" || f.off == 0x1f8 && f.size == 8 || f.off == 0x200) {
			continue // newer-crate aliases of bytes written by another member
		}
		b := report[f.off : f.off+f.size]
		switch f.kind {
		case 'u':
			var buf [8]byte
			copy(buf[:], b)
			obj[f.names[0]] = binary.LittleEndian.Uint64(buf[:])
		case 'b':
			obj[f.names[0]] = numbers(b)
		case 't':
			obj[f.names[0]] = map[string]any{"bootloader": b[0], "tee": b[1], "_reserved": numbers(b[2:6]), "snp": b[6], "microcode": b[7]}
		case 's':
			obj[f.names[0]] = map[string]any{"r": numbers(b[:72]), "s": numbers(b[72:144]), "_reserved": numbers(b[144:])}
		}
	}
	var entries []map[string]any
	add := func(name string, der []byte) {
		if len(der) > 0 {
			entries = append(entries, map[string]any{"cert_type": name, "data": numbers(der)})
		}
	}
	if chain != nil {
		add("ARK", chain.ArkCert)
		add("ASK", chain.AskCert)
		add("VCEK", chain.VcekCert)
		add("VLEK", chain.VlekCert)
	}
	return json.Marshal(map[string]any{"attestation_report": obj, "cert_chain": entries})
}

// numbers makes json.Marshal write bytes as an array of numbers.
func numbers(b []byte) []uint16 {
	out := make([]uint16, len(b))
	for i, c := range b {
		out[i] = uint16(c)
	}
	return out
}
