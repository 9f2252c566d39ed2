package layer

import (
	"fmt"
	"io"
	"os"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
)

// TarStream returns the layer's tar, byte-identical to the one registered:
// the recorded headers and padding with the file contents read from the
// mounted layer.
func (s *Store) TarStream(chainID digest.Digest) (io.ReadCloser, error) {
	l, err := s.Get(chainID)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(s.tarSplitPath(chainID))
	if err != nil {
		return nil, fmt.Errorf("layer %s: tar-split: %w", chainID, err)
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("layer %s: tar-split: %w", chainID, err)
	}
	dir, err := s.driver.Get(l.CacheID, "")
	if err != nil {
		zr.Close()
		f.Close()
		return nil, fmt.Errorf("layer %s: mount: %w", chainID, err)
	}

	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(asm.WriteOutputTarStream(rootFileGetter(dir), storage.NewJSONUnpacker(zr), pw))
	}()
	return &tarStream{PipeReader: pr, done: done, close: func() error {
		zr.Close()
		f.Close()
		return s.driver.Put(l.CacheID)
	}}, nil
}

type tarStream struct {
	*io.PipeReader
	done  <-chan struct{}
	close func() error
}

// Close stops the assembly and waits for it to let go of the layer's files
// before unmounting it.
func (t *tarStream) Close() error {
	t.PipeReader.Close()
	<-t.done
	return t.close()
}

// rootFileGetter opens the files named in a tar-split inside a layer root,
// resolving symlinks as if the root were /.
type rootFileGetter string

func (root rootFileGetter) Get(name string) (io.ReadCloser, error) {
	path, err := securejoin.SecureJoin(string(root), name)
	if err != nil {
		return nil, err
	}
	return os.Open(path)
}
