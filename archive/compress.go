package archive

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/strata-storage/strata/errdefs"
)

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// zstdMaxWindow bounds the history a zstd stream may ask for. 128 MiB covers
// every level of the reference encoder, --ultra -22 included; the decoder
// only allocates what a frame declares, so usual layers stay far below it.
const zstdMaxWindow = 128 << 20

// DecompressStream detects the compression of r from its first bytes and
// returns a reader of the uncompressed stream. Corrupt compressed data reads
// as an error wrapping errdefs.ErrInvalid; errors of r pass through as they are.
// Closing the result releases the decoder, not r.
func DecompressStream(r io.Reader) (io.ReadCloser, Compression, error) {
	src := &sourceReader{r: r}
	br := bufio.NewReaderSize(src, 64<<10)
	magic, err := br.Peek(len(zstdMagic))
	if err != nil && err != io.EOF {
		return nil, Uncompressed, fmt.Errorf("read layer stream: %w", err)
	}
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, Gzip, fmt.Errorf("%w: gzip layer stream: %w", errdefs.ErrInvalid, err)
		}
		return &decoder{r: zr, close: zr.Close, src: src, kind: Gzip}, Gzip, nil
	case bytes.HasPrefix(magic, zstdMagic):
		zr, err := zstd.NewReader(br,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return nil, Zstd, fmt.Errorf("zstd layer stream: %w", err)
		}
		closeZstd := func() error { zr.Close(); return nil }
		return &decoder{r: zr, close: closeZstd, src: src, kind: Zstd}, Zstd, nil
	}
	return io.NopCloser(br), Uncompressed, nil
}

// sourceReader remembers the last error of the compressed stream so that a
// decoder error can be told apart from an I/O error it merely passes on.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.err = err
	}
	return n, err
}

type decoder struct {
	r     io.Reader
	close func() error
	src   *sourceReader
	kind  Compression
}

func (d *decoder) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF && !d.passedOn(err) {
		err = fmt.Errorf("%w: corrupt %s layer stream: %w", errdefs.ErrInvalid, d.kind, err)
	}
	return n, err
}

// passedOn reports whether err is the compressed stream's own I/O error.
func (d *decoder) passedOn(err error) bool {
	return d.src.err != nil && d.src.err != io.EOF && errors.Is(err, d.src.err)
}

func (d *decoder) Close() error { return d.close() }
