package pull

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// layerTimes splits the time one layer took; fetching, decryption and
// unpacking are streamed together, so each is the time spent inside its
// own stage's reads.
type layerTimes struct {
	encrypted              bool
	fetch, decrypt, unpack time.Duration
}

// fetchLayer streams one layer from the registry through verification,
// decryption (if encrypted) and decompression into the unpacker, and checks
// the uncompressed stream against the config's diff_id. Nothing is trusted
// before the whole stream has been read: go-containerregistry checks the
// blob digest at EOF, ocicrypt's cipher checks its HMAC at EOF, and the
// unpacker writes into a directory that only becomes the image's rootfs
// after every layer passed.
func fetchLayer(ctx context.Context, img v1.Image, desc ocispec.Descriptor, diffID digest.Digest, keySocket, image string, u *unpacker) (layerTimes, error) {
	start := time.Now()
	var t layerTimes
	comp, encrypted, err := layerType(desc.MediaType)
	if err != nil {
		return t, err
	}
	t.encrypted = encrypted
	h, err := v1.NewHash(string(desc.Digest))
	if err != nil {
		return t, err
	}
	layer, err := img.LayerByDigest(h)
	if err != nil {
		return t, fmt.Errorf("fetch: %w", err)
	}
	blob, err := layer.Compressed()
	if err != nil {
		return t, fmt.Errorf("fetch: %w", err)
	}
	defer blob.Close()
	fetched := &timedReader{r: blob}
	var plain io.Reader = fetched
	var decrypted *timedReader
	var checkPlain func() error
	if encrypted {
		unwrapStart := time.Now()
		r, verify, err := decryptLayer(ctx, desc, fetched, keySocket, image)
		t.decrypt += time.Since(unwrapStart)
		if err != nil {
			return t, err
		}
		decrypted = &timedReader{r: r}
		plain, checkPlain = decrypted, verify
	}

	tarStream, closeTar, err := decompress(plain, comp)
	if err != nil {
		return t, fmt.Errorf("decompress: %w", err)
	}
	defer closeTar()
	diff := diffID.Verifier()
	if err := u.layer(io.TeeReader(tarStream, diff)); err != nil {
		return t, err
	}
	// Read what the tar reader left (end-of-archive padding, the
	// compressor's trailer, the blob's tail) so every check reaches EOF.
	if _, err := io.Copy(diff, tarStream); err != nil {
		return t, fmt.Errorf("read to end: %w", err)
	}
	if _, err := io.Copy(io.Discard, plain); err != nil {
		return t, fmt.Errorf("read to end: %w", err)
	}
	if checkPlain != nil {
		if err := checkPlain(); err != nil {
			return t, err
		}
	}
	if !diff.Verified() {
		return t, fmt.Errorf("uncompressed content does not match diff_id %s from the image config", diffID)
	}
	t.fetch = fetched.spent
	if decrypted != nil {
		t.decrypt += decrypted.spent - fetched.spent
	}
	t.unpack = time.Since(start) - t.fetch - t.decrypt
	return t, nil
}

func decompress(r io.Reader, c compression) (io.Reader, func(), error) {
	switch c {
	case gzipped:
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, func() { z.Close() }, nil
	case zstded:
		// The window limit keeps a hostile frame from reserving much memory.
		z, err := zstd.NewReader(r, zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return z, z.Close, nil
	}
	return r, func() {}, nil
}

// timedReader adds up the time spent in Read, the stage's own work plus
// what it waited for below it.
type timedReader struct {
	r     io.Reader
	spent time.Duration
}

func (t *timedReader) Read(p []byte) (int, error) {
	start := time.Now()
	n, err := t.r.Read(p)
	t.spent += time.Since(start)
	return n, err
}
