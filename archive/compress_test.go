package archive

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/strata-storage/strata/errdefs"
)

func compress(t testing.TB, c Compression, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	switch c {
	case Uncompressed:
		return b
	case Gzip:
		w = gzip.NewWriter(&buf)
	case Zstd:
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w = zw
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecompressCorrupt(t *testing.T) {
	plain := tarOf(t, file("a", "some content that compresses"))
	for _, c := range []Compression{Gzip, Zstd} {
		stream := compress(t, c, plain)
		for name, bad := range map[string][]byte{
			"truncated": stream[:len(stream)-6],
			"flipped":   append(append(append([]byte{}, stream[:12]...), stream[12]^0xff), stream[13:]...),
		} {
			t.Run(c.String()+"/"+name, func(t *testing.T) {
				r, _, err := DecompressStream(bytes.NewReader(bad))
				if err == nil {
					_, err = io.ReadAll(r)
					r.Close()
				}
				if !errors.Is(err, errdefs.ErrInvalid) {
					t.Errorf("error %v, want one wrapping ErrInvalid", err)
				}
			})
		}
	}
}

// A failing source is reported as it is, not as corrupt input.
func TestDecompressPassesIOErrors(t *testing.T) {
	stream := compress(t, Gzip, tarOf(t, file("a", "a")))
	failure := errors.New("disk on fire")
	r, _, err := DecompressStream(io.MultiReader(bytes.NewReader(stream[:20]), iotestErr{failure}))
	if err == nil {
		_, err = io.ReadAll(r)
	}
	if !errors.Is(err, failure) || errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("error %v, want the source's error", err)
	}
}

type iotestErr struct{ err error }

func (e iotestErr) Read([]byte) (int, error) { return 0, e.err }
