package qemu

import (
	"fmt"
	"os"
	"path/filepath"
)

// idRootDrive names the root disk's block backend.
const idRootDrive = "root"

func (c Config) validateRootDisk() error {
	if c.RootDisk == "" {
		return nil
	}
	// Absolute, so that QEMU neither resolves it against its own working
	// directory nor reads a "name:" prefix as a protocol (nbd:, http:).
	if !filepath.IsAbs(c.RootDisk) {
		return fmt.Errorf("root disk %q is relative: use an absolute path", c.RootDisk)
	}
	fi, err := os.Stat(c.RootDisk)
	if err != nil {
		return fmt.Errorf("root disk: %w: build the guest image or point Config.RootDisk at a raw disk image", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("root disk %q is not a regular file (mode %s): point Config.RootDisk at a raw disk image file", c.RootDisk, fi.Mode().Type())
	}
	return nil
}

// rootDiskArgs attaches RootDisk read-only. Called before any other block
// device is added, so the guest names it /dev/vda.
//
// The image is one file that every pod VM on the host opens, never written:
//   - cache.direct=off reads through the host page cache, so all VMs share
//     one cached copy instead of each reading the disk with O_DIRECT;
//   - aio=threads is what cache.direct=off allows (aio=native needs
//     O_DIRECT) and costs nothing for a read-mostly boot disk;
//   - readonly=on opens the file O_RDONLY with a shared lock, so any
//     number of VMs can hold it while QEMU refuses to open it for
//     writing; the guest sees a read-only disk (VIRTIO_BLK_F_RO), so
//     write-cache and flush settings never come into play.
//
// Under SNP and TDX the host serves this disk: it is not part of the
// launch measurement, so the guest must check it (dm-verity with the root
// hash on the measured kernel command line) before trusting a byte of it.
func rootDiskArgs(cfg Config) []string {
	if cfg.RootDisk == "" {
		return nil
	}
	return []string{
		"-drive", "file=" + escape(cfg.RootDisk) + ",if=none,id=" + idRootDrive +
			",format=raw,readonly=on,cache.direct=off,aio=threads",
		"-device", "virtio-blk-pci,drive=" + idRootDrive + virtioOptions(cfg),
	}
}
