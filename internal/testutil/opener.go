package testutil

import (
	"bytes"
	"io"
)

// BytesOpener opens b anew on each call, for go-containerregistry's
// tarball.LayerFromOpener (LayerFromReader, which did the same, is
// deprecated).
func BytesOpener(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}
