package snp

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/google/uuid"

	"github.com/cloak-containers/cloak/measurements/ovmf"
)

// GUIDs of QEMU's SEV hashes table (target/i386/sev.c).
var (
	hashesTableGUID  = uuid.MustParse("9438d606-4f22-4cc9-b479-a793d411fd21")
	kernelEntryGUID  = uuid.MustParse("4de79437-abd2-427f-b835-d5b172d2045b")
	initrdEntryGUID  = uuid.MustParse("44baf731-3a2f-4bd7-9af1-41e29169781d")
	cmdlineEntryGUID = uuid.MustParse("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
)

const (
	hashEntrySize = 16 + 2 + sha256.Size       // GUID, u16 length, SHA-256
	hashTableSize = 16 + 2 + 3*hashEntrySize   // 168
	paddedTableSz = (hashTableSize + 15) &^ 15 // 176: QEMU pads to 16 bytes
)

// Hashes are the three SHA-256 digests QEMU puts in the SEV hashes table.
type Hashes struct {
	Kernel, Initrd, Cmdline [sha256.Size]byte
}

// HashesOf hashes the artifacts as QEMU does: the kernel file as is, the
// initrd (nothing when absent), the command line with its trailing NUL.
func HashesOf(kernel, initrd []byte, cmdline string) Hashes {
	return Hashes{
		Kernel:  sha256.Sum256(kernel),
		Initrd:  sha256.Sum256(initrd),
		Cmdline: sha256.Sum256(append([]byte(cmdline), 0)),
	}
}

// Table returns the padded SEV hashes table: header GUID and length, then the
// cmdline, initrd and kernel entries, zero padding to 176 bytes.
func (h Hashes) Table() []byte {
	b := make([]byte, 0, paddedTableSz)
	entry := func(g uuid.UUID, size int) {
		le := ovmf.GUIDLE(g)
		b = append(b, le[:]...)
		b = binary.LittleEndian.AppendUint16(b, uint16(size))
	}
	entry(hashesTableGUID, hashTableSize)
	entry(cmdlineEntryGUID, hashEntrySize)
	b = append(b, h.Cmdline[:]...)
	entry(initrdEntryGUID, hashEntrySize)
	b = append(b, h.Initrd[:]...)
	entry(kernelEntryGUID, hashEntrySize)
	b = append(b, h.Kernel[:]...)
	return append(b, make([]byte, paddedTableSz-len(b))...)
}

// Page returns the KERNEL_HASHES page: the table at offset within the page,
// zeros elsewhere.
func (h Hashes) Page(offset int) ([]byte, bool) {
	if offset < 0 || offset+paddedTableSz > pageSize {
		return nil, false
	}
	p := make([]byte, pageSize)
	copy(p[offset:], h.Table())
	return p, true
}
