package layer

import (
	"errors"
	"fmt"
	"io"
	"os"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
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

	root, err := os.Open(dir)
	if err != nil {
		zr.Close()
		f.Close()
		return nil, errors.Join(err, s.driver.Put(l.CacheID))
	}

	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(asm.WriteOutputTarStream(rootFileGetter{root}, storage.NewJSONUnpacker(zr), pw))
	}()
	return &tarStream{PipeReader: pr, done: done, close: func() error {
		zr.Close()
		f.Close()
		root.Close()
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
// resolving symlinks as if the root were /: with openat2's RESOLVE_IN_ROOT,
// one system call per file, or SecureJoin where the kernel lacks openat2.
type rootFileGetter struct{ root *os.File }

func (g rootFileGetter) Get(name string) (io.ReadCloser, error) {
	fd, err := unix.Openat2(int(g.root.Fd()), name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOSYS) {
		path, err := securejoin.SecureJoin(g.root.Name(), name)
		if err != nil {
			return nil, err
		}
		return os.Open(path)
	}
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}
