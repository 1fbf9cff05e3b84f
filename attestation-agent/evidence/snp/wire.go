package snp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/google/go-sev-guest/abi"
)

// Evidence JSON: what Trustee's SNP attester (guest-components, Rust crate
// `sev`) sends and Trustee's SNP verifier parses:
//
//	{"attestation_report": {...}, "cert_chain": [{"cert_type": "VCEK", "data": [...]}, ...] | null}
//
// attestation_report is serde's encoding of the crate's AttestationReport:
// every ABI field by name in ABI order, integers as JSON numbers, byte
// arrays as arrays of numbers, TCB versions as {bootloader, tee, _reserved,
// snp, microcode} and the signature as {r, s, _reserved} (little-endian, as
// in the report). cert_chain lists the extended report's certificates with
// their type (ARK, ASK, VCEK, VLEK, or {"OTHER": GUID}) and DER bytes.
// reportFields walks the 1184-byte report in that order.
var reportFields = []field{
	{"version", 0x00, 4, kindUint}, {"guest_svn", 0x04, 4, kindUint},
	{"policy", 0x08, 8, kindUint}, {"family_id", 0x10, 16, kindBytes},
	{"image_id", 0x20, 16, kindBytes}, {"vmpl", 0x30, 4, kindUint},
	{"sig_algo", 0x34, 4, kindUint}, {"current_tcb", 0x38, 8, kindTCB},
	{"plat_info", 0x40, 8, kindUint}, {"_author_key_en", 0x48, 4, kindUint},
	{"_reserved_0", 0x4C, 4, kindUint}, {"report_data", 0x50, 64, kindBytes},
	{"measurement", 0x90, 48, kindBytes}, {"host_data", 0xC0, 32, kindBytes},
	{"id_key_digest", 0xE0, 48, kindBytes}, {"author_key_digest", 0x110, 48, kindBytes},
	{"report_id", 0x140, 32, kindBytes}, {"report_id_ma", 0x160, 32, kindBytes},
	{"reported_tcb", 0x180, 8, kindTCB}, {"_reserved_1", 0x188, 24, kindBytes},
	{"chip_id", 0x1A0, 64, kindBytes}, {"committed_tcb", 0x1E0, 8, kindTCB},
	{"current_build", 0x1E8, 1, kindUint}, {"current_minor", 0x1E9, 1, kindUint},
	{"current_major", 0x1EA, 1, kindUint}, {"_reserved_2", 0x1EB, 1, kindUint},
	{"committed_build", 0x1EC, 1, kindUint}, {"committed_minor", 0x1ED, 1, kindUint},
	{"committed_major", 0x1EE, 1, kindUint}, {"_reserved_3", 0x1EF, 1, kindUint},
	{"launch_tcb", 0x1F0, 8, kindTCB}, {"_reserved_4", 0x1F8, 168, kindBytes},
	{"signature", 0x2A0, 512, kindSignature},
}

type fieldKind int

const (
	kindUint fieldKind = iota
	kindBytes
	kindTCB
	kindSignature
)

type field struct {
	name      string
	off, size int
	kind      fieldKind
}

// EncodeEvidence renders a raw report and its certificate table (may be
// empty) as Trustee's SNP evidence JSON.
func EncodeEvidence(report, certTable []byte) (json.RawMessage, error) {
	if len(report) != abi.ReportSize {
		return nil, fmt.Errorf("snp report is %d bytes, want %d", len(report), abi.ReportSize)
	}
	var b bytes.Buffer
	b.WriteString(`{"attestation_report":{`)
	for i, f := range reportFields {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:", f.name)
		v := report[f.off : f.off+f.size]
		switch f.kind {
		case kindUint:
			var n uint64
			for j := len(v) - 1; j >= 0; j-- {
				n = n<<8 | uint64(v[j])
			}
			b.WriteString(strconv.FormatUint(n, 10))
		case kindBytes:
			writeBytes(&b, v)
		case kindTCB:
			fmt.Fprintf(&b, `{"bootloader":%d,"tee":%d,"_reserved":`, v[0], v[1])
			writeBytes(&b, v[2:6])
			fmt.Fprintf(&b, `,"snp":%d,"microcode":%d}`, v[6], v[7])
		case kindSignature:
			b.WriteString(`{"r":`)
			writeBytes(&b, v[0:72])
			b.WriteString(`,"s":`)
			writeBytes(&b, v[72:144])
			b.WriteString(`,"_reserved":`)
			writeBytes(&b, v[144:])
			b.WriteByte('}')
		}
	}
	b.WriteString(`},"cert_chain":`)
	if err := writeCertChain(&b, certTable); err != nil {
		return nil, err
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func writeBytes(b *bytes.Buffer, v []byte) {
	b.WriteByte('[')
	for i, c := range v {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(int(c)))
	}
	b.WriteByte(']')
}

// certTypes are the cert_type names of the GUIDs the GHCB specification
// defines.
var certTypes = map[string]string{
	abi.ArkGUID:  "ARK",
	abi.AskGUID:  "ASK",
	abi.VcekGUID: "VCEK",
	abi.VlekGUID: "VLEK",
}

func writeCertChain(b *bytes.Buffer, certTable []byte) error {
	if len(certTable) == 0 {
		b.WriteString("null")
		return nil
	}
	var t abi.CertTable
	if err := t.Unmarshal(certTable); err != nil {
		return fmt.Errorf("snp certificate table: %w", err)
	}
	b.WriteByte('[')
	for i, e := range t.Entries {
		if i > 0 {
			b.WriteByte(',')
		}
		typ, err := json.Marshal(map[string]string{"OTHER": e.GUID.String()})
		if err != nil {
			return err
		}
		if name, ok := certTypes[e.GUID.String()]; ok {
			typ = []byte(strconv.Quote(name))
		}
		fmt.Fprintf(b, `{"cert_type":%s,"data":`, typ)
		writeBytes(b, e.RawCert)
		b.WriteByte('}')
	}
	b.WriteByte(']')
	return nil
}
