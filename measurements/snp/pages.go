package snp

import (
	"crypto/sha512"
	"encoding/binary"
	"fmt"
)

// PageType is the SNP_LAUNCH_UPDATE page type (SEV-SNP ABI, PAGE_INFO).
type PageType uint8

// Page types that a QEMU launch uses.
const (
	PageNormal  PageType = 0x01
	PageVMSA    PageType = 0x02
	PageZero    PageType = 0x03
	PageSecrets PageType = 0x05
	PageCPUID   PageType = 0x06
)

// Page is one measured page: its type, GPA and the 48-byte CONTENTS field
// (SHA-384 of the page for normal and VMSA pages, zeros otherwise).
type Page struct {
	Type     PageType
	GPA      uint64
	Contents [sha512.Size384]byte
}

// Pages lists the pages QEMU launches for in, in launch order.
func Pages(in Inputs) ([]Page, error) {
	if err := in.validate(); err != nil {
		return nil, err
	}
	fw, err := ParseFirmware(in.Firmware)
	if err != nil {
		return nil, err
	}
	sig := in.signature()
	pages := make([]Page, 0, len(in.Firmware)/pageSize+in.VCPUs+16)
	pages = appendNormal(pages, fw.GPA, in.Firmware)

	var sawHashes bool
	for _, s := range fw.Sections {
		switch s.Type {
		case SectionSECMem, SectionSVSMCAA:
			pages = appendTyped(pages, PageZero, s.GPA, s.Size)
		case SectionSecrets:
			pages = append(pages, Page{Type: PageSecrets, GPA: uint64(s.GPA)})
		case SectionCPUID:
			pages = append(pages, Page{Type: PageCPUID, GPA: uint64(s.GPA)})
		case SectionKernelHashes:
			sawHashes = true
			if in.Kernel == nil {
				pages = appendTyped(pages, PageZero, s.GPA, s.Size)
				continue
			}
			if s.Size != pageSize {
				return nil, fmt.Errorf("%w: KERNEL_HASHES section is %#x bytes, want one page", ErrFirmware, s.Size)
			}
			if fw.HashesTableGPA&^(pageSize-1) != s.GPA {
				return nil, fmt.Errorf("%w: SEV hashes table at %#x is not in the KERNEL_HASHES page %#x", ErrFirmware, fw.HashesTableGPA, s.GPA)
			}
			p, _ := HashesOf(in.Kernel, in.Initrd, in.Cmdline).Page(int(fw.HashesTableGPA & (pageSize - 1)))
			pages = appendNormal(pages, uint64(s.GPA), p)
		default:
			return nil, fmt.Errorf("%w: unknown SEV metadata section %s at %#x", ErrFirmware, s.Type, s.GPA)
		}
	}
	if in.Kernel != nil && !sawHashes {
		return nil, fmt.Errorf("%w: no KERNEL_HASHES metadata section, so kernel-hashes=on cannot measure a kernel (use OVMF.amdsev.fd)", ErrFirmware)
	}

	// QEMU gives every AP the same VMSA: hash it once.
	bsp := Page{Type: PageVMSA, GPA: vmsaGPA, Contents: sha512.Sum384(VMSAPage(bspEIP, sig, in.GuestFeatures))}
	pages = append(pages, bsp)
	if in.VCPUs > 1 {
		ap := Page{Type: PageVMSA, GPA: vmsaGPA, Contents: sha512.Sum384(VMSAPage(fw.ResetEIP, sig, in.GuestFeatures))}
		for range in.VCPUs - 1 {
			pages = append(pages, ap)
		}
	}
	return pages, nil
}

func appendNormal(pages []Page, gpa uint64, data []byte) []Page {
	for off := 0; off < len(data); off += pageSize {
		pages = append(pages, Page{Type: PageNormal, GPA: gpa + uint64(off), Contents: sha512.Sum384(data[off : off+pageSize])})
	}
	return pages
}

func appendTyped(pages []Page, t PageType, gpa, size uint32) []Page {
	for off := uint32(0); off < size; off += pageSize {
		pages = append(pages, Page{Type: t, GPA: uint64(gpa + off)})
	}
	return pages
}

// pageInfoSize is the PAGE_INFO length the digest covers.
const pageInfoSize = 0x70

// PageInfo returns the PAGE_INFO structure (SEV-SNP ABI table "Layout of the
// PAGE_INFO structure") for p, chained to the digest so far: DIGEST_CUR,
// CONTENTS, LENGTH, PAGE_TYPE, IMI_PAGE=0, VMPL3..1 permissions=0, GPA.
func PageInfo(cur [sha512.Size384]byte, p Page) []byte {
	b := make([]byte, 0, pageInfoSize)
	b = append(b, cur[:]...)
	b = append(b, p.Contents[:]...)
	b = binary.LittleEndian.AppendUint16(b, pageInfoSize)
	b = append(b, byte(p.Type), 0, 0, 0, 0, 0)
	return binary.LittleEndian.AppendUint64(b, p.GPA)
}

// Digest chains the pages into the launch digest, starting from zeros.
func Digest(pages []Page) [sha512.Size384]byte {
	var d [sha512.Size384]byte
	for _, p := range pages {
		d = sha512.Sum384(PageInfo(d, p))
	}
	return d
}
