// Package measurements computes the launch measurements a guest image is
// expected to produce, so that a relying party can recompute them from the
// published boot artifacts (kernel, initrd, command line) alone.
package measurements

import (
	"crypto/sha512"
	"encoding/binary"
	"hash"
)

// EmulatedDomain starts every emulated launch digest. It separates this
// digest from any other SHA-384 over similar inputs and carries the encoding's
// version: a new encoding gets a new domain string.
const EmulatedDomain = "cloak/emulated-launch/v1"

// EmulatedLaunchDigest returns the launch measurement of Cloak's emulated TEE
// platform for a guest booted from kernel, initrd and cmdline:
//
//	SHA-384( domain || field("kernel", SHA-384(kernel))
//	                || field("initrd", SHA-384(initrd))
//	                || field("cmdline", SHA-384(cmdline)) )
//	domain       = u32be(len(EmulatedDomain)) || EmulatedDomain
//	field(l, h)  = u32be(len(l)) || l || u32be(len(h)) || h
//
// u32be is a 4-byte big-endian length; labels are ASCII; each h is 48 bytes.
// No initrd is the empty initrd (SHA-384 of nothing): Cloak's own kernel boots
// without one, its root disk covered by the root hash on cmdline. cmdline is
// hashed exactly as given, without a trailing NUL. Length prefixes
// make the encoding injective, so no two different triples share a preimage.
func EmulatedLaunchDigest(kernel, initrd []byte, cmdline string) []byte {
	k := sha512.Sum384(kernel)
	i := sha512.Sum384(initrd)
	c := sha512.Sum384([]byte(cmdline))
	return EmulatedLaunchDigestFromHashes(k, i, c)
}

// EmulatedLaunchDigestFromHashes is EmulatedLaunchDigest for callers that
// already hold the SHA-384 of each artifact (a manifest, or a reader that
// streamed a large file).
func EmulatedLaunchDigestFromHashes(kernel, initrd, cmdline [sha512.Size384]byte) []byte {
	h := sha512.New384()
	writeField(h, EmulatedDomain, nil)
	writeField(h, "kernel", kernel[:])
	writeField(h, "initrd", initrd[:])
	writeField(h, "cmdline", cmdline[:])
	return h.Sum(nil)
}

// writeField appends u32be(len(label)) || label and, for a non-nil value,
// u32be(len(value)) || value.
func writeField(h hash.Hash, label string, value []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(label)))
	h.Write(n[:])
	h.Write([]byte(label))
	if value == nil {
		return
	}
	binary.BigEndian.PutUint32(n[:], uint32(len(value)))
	h.Write(n[:])
	h.Write(value)
}
