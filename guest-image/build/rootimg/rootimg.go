// Package rootimg makes the guest's read-only root disk: an EROFS image of a
// file tree, followed by its dm-verity hash tree, in one file. The kernel
// sets the verity device up itself from the dm-mod.create= option that
// KernelArgs returns (CONFIG_DM_INIT), so no initramfs is needed, and since
// that option carries the root hash and is part of the measured kernel
// command line, the launch measurement covers every byte of the root.
//
// The filesystem and the hash tree come from the reference tools,
// mkfs.erofs (erofs-utils) and veritysetup (cryptsetup-bin): nothing in Go
// writes EROFS, and the hash tree must be exactly what the kernel checks.
// Both are deterministic given a fixed timestamp, UUID and salt.
package rootimg

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cloak-containers/cloak/guest-image/build/initramfs"
)

// BlockSize is both the data and the hash block size: the page size, which
// EROFS and dm-verity handle most efficiently.
const BlockSize = 4096

// Device is the root disk as the guest sees it: the first virtio-blk disk.
const Device = "/dev/vda"

// fixedUUID keeps mkfs.erofs from writing a random filesystem UUID.
const fixedUUID = "00000000-0000-0000-0000-000000000000"

// Image describes a root disk.
type Image struct {
	// Size is the file's size: DataSize plus the hash tree.
	Size int64 `json:"size"`
	// SHA256 is the whole file's SHA-256.
	SHA256 string `json:"sha256"`
	// DataSize is the EROFS image's size, a multiple of BlockSize; the
	// hash tree starts there.
	DataSize int64 `json:"data_size"`
	// RootHash is dm-verity's root hash (SHA-256).
	RootHash string `json:"root_hash"`
	// Salt is the verity salt: the SHA-256 of the EROFS image, so it is
	// unique to the content and yet reproducible.
	Salt string `json:"salt"`
}

// DataBlocks returns the number of data blocks.
func (im *Image) DataBlocks() int64 { return im.DataSize / BlockSize }

// Table returns the dm-verity table line for the image on dev. A corrupted
// block panics the guest (panic_on_corruption): a guest that read a byte the
// build did not write must not go on running, and the launcher turns the
// panic into the VM's end (panic=-1, -no-reboot).
func (im *Image) Table(dev string) string {
	return fmt.Sprintf("0 %d verity 1 %s %s %d %d %d %d sha256 %s %s 1 panic_on_corruption",
		im.DataSize/512, dev, dev, BlockSize, BlockSize, im.DataBlocks(), im.DataBlocks(), im.RootHash, im.Salt)
}

// KernelArgs returns the kernel command line options that mount the image
// as the root, verified, read-only, and run init from it.
func (im *Image) KernelArgs(init string) string {
	return strings.Join([]string{
		"dm-mod.waitfor=" + Device,
		`dm-mod.create="root,,,ro,` + im.Table(Device) + `"`,
		"root=/dev/dm-0", "rootfstype=erofs", "ro",
		"init=" + init,
	}, " ")
}

// Build writes tree as an EROFS image plus its hash tree to out.
func Build(ctx context.Context, tree *initramfs.Archive, out string) (*Image, error) {
	tmp, err := os.MkdirTemp(filepath.Dir(out), ".rootimg-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "root")
	if err := tree.WriteTree(dir); err != nil {
		return nil, err
	}
	img := filepath.Join(tmp, "root.img")
	// -x-1: no extended attributes (none are needed, and the staging
	// directory's would leak in); -T0 and the fixed UUID: reproducible.
	if err := run(ctx, "mkfs.erofs", "--quiet", "-x-1", "-T0", "-U", fixedUUID, "--all-root", img, dir); err != nil {
		return nil, fmt.Errorf("make the root filesystem (apt-get install erofs-utils, or run ci/vm-deps.sh): %w", err)
	}
	data, err := os.ReadFile(img)
	if err != nil {
		return nil, err
	}
	if pad := len(data) % BlockSize; pad != 0 {
		data = append(data, make([]byte, BlockSize-pad)...)
		if err := os.WriteFile(img, data, 0o644); err != nil {
			return nil, err
		}
	}
	salt := sha256.Sum256(data)
	im := &Image{DataSize: int64(len(data)), Salt: hex.EncodeToString(salt[:])}
	outb, err := output(ctx, "veritysetup", append([]string{"format"}, im.verityArgs(img)...)...)
	if err != nil {
		return nil, fmt.Errorf("hash the root filesystem (apt-get install cryptsetup-bin, or run ci/vm-deps.sh): %w", err)
	}
	if im.RootHash, err = parseRootHash(outb); err != nil {
		return nil, err
	}
	all, err := os.ReadFile(img)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(all)
	im.Size, im.SHA256 = int64(len(all)), hex.EncodeToString(sum[:])
	if err := os.Rename(img, out); err != nil {
		return nil, err
	}
	return im, nil
}

// verityArgs are veritysetup's options for the image in file, hash tree
// after the data, no verity superblock (the table carries every parameter).
func (im *Image) verityArgs(file string) []string {
	return []string{
		"--no-superblock", "--hash=sha256",
		"--data-block-size=" + strconv.Itoa(BlockSize), "--hash-block-size=" + strconv.Itoa(BlockSize),
		"--data-blocks=" + strconv.FormatInt(im.DataBlocks(), 10),
		"--hash-offset=" + strconv.FormatInt(im.DataSize, 10),
		"--salt=" + im.Salt,
		file, file,
	}
}

// Verify checks every block of the image at path against the root hash, as
// the guest's kernel would (veritysetup verify, in user space).
func Verify(ctx context.Context, path string, im *Image) error {
	if _, err := hex.DecodeString(im.RootHash); err != nil || len(im.RootHash) != 64 {
		return fmt.Errorf("root image: root hash %q is not a SHA-256", im.RootHash)
	}
	if err := run(ctx, "veritysetup", append(append([]string{"verify"}, im.verityArgs(path)...), im.RootHash)...); err != nil {
		return fmt.Errorf("root image %s does not match its root hash %s (a block was changed after the build): %w", path, im.RootHash, err)
	}
	return nil
}

func parseRootHash(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Root hash:"); ok {
			v = strings.TrimSpace(v)
			if b, err := hex.DecodeString(v); err == nil && len(b) == sha256.Size {
				return v, nil
			}
			return "", fmt.Errorf("veritysetup printed root hash %q, not a SHA-256", v)
		}
	}
	return "", errors.New("veritysetup format printed no root hash")
}

func run(ctx context.Context, name string, args ...string) error {
	_, err := output(ctx, name, args...)
	return err
}

func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String() + " " + string(out))
		return nil, fmt.Errorf("%s %s: %w: %s", name, args[0], err, msg)
	}
	return out, nil
}
