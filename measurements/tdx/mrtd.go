// Package tdx computes the Intel TDX measurement registers of a QEMU guest
// booted directly (-kernel) from an OVMF IntelTdx (TDVF) build:
//
//   - MRTD, from the TDVF metadata: the TDH.MEM.PAGE.ADD and TDH.MR.EXTEND
//     calls that QEMU and KVM make, in upstream KVM's order (each page added,
//     then its 16 256-byte chunks extended, before the next page);
//   - RTMR1, from the kernel's Authenticode digest and the boot events TDVF
//     logs around it;
//   - RTMR2, from the command line and initrd as the kernel's EFI stub
//     measures them.
//
// RTMR0 is not computed: it covers QEMU's ACPI tables (see RTMR0Reason).
//
// Each register is computed in two steps, inputs -> operations (the MRTD
// operations or the RTMR event digests) -> digest, so a test or a human can
// compare each step with an event log.
package tdx

import (
	"crypto/sha512"
	"encoding/binary"
)

// OpKind is a TDX module call that extends MRTD.
type OpKind uint8

// MRTD operations.
const (
	OpPageAdd OpKind = iota + 1 // TDH.MEM.PAGE.ADD: the GPA only
	OpExtend                    // TDH.MR.EXTEND: a 256-byte chunk and its GPA
)

const extendChunk = 256

// Op is one MRTD update.
type Op struct {
	Kind OpKind
	GPA  uint64
	Data []byte // OpExtend: the chunk (256 bytes)
}

// MRTDOps lists the MRTD updates QEMU makes for a firmware, in order: the
// sections in metadata order (QEMU's KVM_TDX_INIT_MEM_REGION loop), each page
// added (unless the section is PAGE_AUG) and, if the section is MR_EXTEND,
// extended chunk by chunk before the next page (KVM's tdx_gmem_post_populate).
func MRTDOps(fw []byte, sections []Section) []Op {
	var ops []Op
	for _, s := range sections {
		for page := uint64(0); page < s.MemorySize/pageSize; page++ {
			gpa := s.MemoryAddress + page*pageSize
			if s.Attributes&AttrPageAug == 0 {
				ops = append(ops, Op{Kind: OpPageAdd, GPA: gpa})
			}
			if s.Attributes&AttrMRExtend == 0 {
				continue
			}
			off := uint64(s.DataOffset) + page*pageSize
			for c := uint64(0); c < pageSize; c += extendChunk {
				ops = append(ops, Op{Kind: OpExtend, GPA: gpa + c, Data: fw[off+c : off+c+extendChunk]})
			}
		}
	}
	return ops
}

// MRTDDigest runs the TDX module's MRTD hash over ops: each operation is a
// 128-byte block (the ASCII name zero-padded to 16 bytes, the GPA at byte
// 16, zeros), an extend followed by its 256 data bytes; MRTD is the SHA-384
// of the whole sequence (TDX module spec, TDH.MEM.PAGE.ADD / TDH.MR.EXTEND).
func MRTDDigest(ops []Op) [48]byte {
	h := sha512.New384()
	var blk [128]byte
	for _, op := range ops {
		clear(blk[:])
		switch op.Kind {
		case OpPageAdd:
			copy(blk[:], "MEM.PAGE.ADD")
		case OpExtend:
			copy(blk[:], "MR.EXTEND")
		}
		binary.LittleEndian.PutUint64(blk[16:], op.GPA)
		h.Write(blk[:])
		if op.Kind == OpExtend {
			h.Write(op.Data)
		}
	}
	var d [48]byte
	h.Sum(d[:0])
	return d
}

// MRTD returns MRTD for a TDVF firmware image.
func MRTD(fw []byte) ([48]byte, error) {
	secs, err := ParseFirmware(fw)
	if err != nil {
		return [48]byte{}, err
	}
	return MRTDDigest(MRTDOps(fw, secs)), nil
}

// RTMR0Reason says why RTMR0 is not computed, for the CLI and the docs.
const RTMR0Reason = "TDVF extends it with QEMU's ACPI tables (etc/acpi/tables, rsdp, " +
	"table-loader), which QEMU generates at start from the machine type, vCPUs, memory and devices, and with " +
	"the TD HOB, the variable store and the Secure Boot variables; reproducing them needs the TDX-capable QEMU " +
	"(10.1+) that built them. Take RTMR0 from a known-good TD's evidence (kbsctl evidence verify)"
