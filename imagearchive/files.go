package imagearchive

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
)

// files is the content of an image archive, by slash-separated name
// relative to the archive's root. Open may be called concurrently.
type files interface {
	// Open returns the content and size of the regular file name.
	Open(name string) (io.ReadCloser, int64, error)
	Has(name string) bool
	Close() error
}

// openFiles makes the files of r randomly accessible, so that several layers
// can be read at once:
//   - an *os.File that is a directory is read as an unpacked archive, such
//     as an OCI layout;
//   - an *os.File that is a regular file, or any reader with ReadAt and Seek,
//     is indexed in place (tar headers only) from its current offset;
//   - anything else (a pipe, stdin) is first copied to an unlinked temporary
//     file under tmpDir, which the system frees when the load ends or the
//     process dies.
func openFiles(ctx context.Context, r io.Reader, tmpDir string) (files, error) {
	if f, ok := r.(*os.File); ok {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		switch {
		case fi.IsDir():
			root, err := os.OpenRoot(f.Name())
			if err != nil {
				return nil, err
			}
			return dirFiles{root}, nil
		case fi.Mode().IsRegular():
			return indexTar(f, f, nil)
		}
		return spool(ctx, r, tmpDir)
	}
	if rs, ok := r.(interface {
		io.ReaderAt
		io.Seeker
	}); ok {
		return indexTar(rs, rs, nil)
	}
	return spool(ctx, r, tmpDir)
}

// spoolInMemory bounds the part of an archive spooled in memory: an eighth
// of the machine's memory. A spool file under the store's root would share
// its file system, whose syncfs at the end of the load would write the
// whole spool to disk along with the layers.
var spoolInMemory = func() int64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit) / 8
}()

// spool copies r to memory (a memfd), or to an unlinked temporary file under
// tmpDir once it outgrows spoolInMemory, and indexes it.
func spool(ctx context.Context, r io.Reader, tmpDir string) (files, error) {
	w := &spoolWriter{tmpDir: tmpDir}
	fd, err := unix.MemfdCreate("strata-load", unix.MFD_CLOEXEC)
	if err == nil {
		w.f, w.inMemory = os.NewFile(uintptr(fd), "strata-load"), true
	} else if w.f, err = tempFile(tmpDir); err != nil {
		return nil, err
	}
	if _, err := io.CopyBuffer(w, ctxReader{ctx, r}, make([]byte, 1<<20)); err != nil {
		w.f.Close()
		return nil, fmt.Errorf("reading archive: %w", err)
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		w.f.Close()
		return nil, err
	}
	return indexTar(w.f, w.f, w.f)
}

// spoolWriter writes to its file, moving what it holds from memory to disk
// when it outgrows spoolInMemory.
type spoolWriter struct {
	f        *os.File
	n        int64
	inMemory bool // f is a memfd
	tmpDir   string
}

func (w *spoolWriter) Write(p []byte) (int, error) {
	if w.inMemory && w.n+int64(len(p)) > spoolInMemory {
		if err := w.moveToDisk(); err != nil {
			return 0, err
		}
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *spoolWriter) moveToDisk() error {
	d, err := tempFile(w.tmpDir)
	if err != nil {
		return err
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		d.Close()
		return err
	}
	// Hiding ReadFrom makes the copy use io.Copy's buffer, not a splice.
	if _, err := io.Copy(struct{ io.Writer }{d}, w.f); err != nil {
		d.Close()
		return err
	}
	w.f.Close()
	w.f, w.inMemory = d, false
	return nil
}

// tempFile creates an unlinked file under dir.
func tempFile(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "load-*.tar")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// tarFiles are the regular files of a tar read in place.
type tarFiles struct {
	ra      io.ReaderAt
	entries map[string]section
	closer  io.Closer // the spool file, nil when the caller owns ra
}

type section struct{ off, size int64 }

// indexTar reads the headers of the tar at rs's current offset, skipping the
// content, and records where each regular file lies. Entries named outside
// the archive, or twice, make the archive invalid.
func indexTar(ra io.ReaderAt, rs io.Seeker, closer io.Closer) (files, error) {
	t, err := readIndex(ra, rs)
	if err != nil {
		if closer != nil {
			closer.Close()
		}
		return nil, err
	}
	t.closer = closer
	return t, nil
}

func readIndex(ra io.ReaderAt, rs io.Seeker) (*tarFiles, error) {
	base, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, err
	}
	end, err := rs.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	sr := io.NewSectionReader(ra, base, end-base)
	tr := tar.NewReader(sr)
	t := &tarFiles{ra: ra, entries: make(map[string]section)}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading archive: %v: %w", err, errdefs.ErrInvalid)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return nil, err
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		if _, dup := t.entries[name]; dup {
			return nil, fmt.Errorf("archive holds %q twice: %w", name, errdefs.ErrInvalid)
		}
		// tar.Reader reads nothing ahead: the section is now at the content.
		off, err := sr.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		if off+hdr.Size > sr.Size() {
			return nil, fmt.Errorf("archive is truncated in %q: %w", name, errdefs.ErrInvalid)
		}
		t.entries[name] = section{base + off, hdr.Size}
	}
	if len(t.entries) == 0 {
		return nil, fmt.Errorf("archive is empty: %w", errdefs.ErrInvalid)
	}
	return t, nil
}

func (t *tarFiles) Open(name string) (io.ReadCloser, int64, error) {
	name, err := cleanName(name)
	if err != nil {
		return nil, 0, err
	}
	s, ok := t.entries[name]
	if !ok {
		return nil, 0, missing(name)
	}
	return io.NopCloser(io.NewSectionReader(t.ra, s.off, s.size)), s.size, nil
}

func (t *tarFiles) Has(name string) bool {
	_, ok := t.entries[path.Clean(name)]
	return ok
}

func (t *tarFiles) Close() error {
	if t.closer != nil {
		return t.closer.Close()
	}
	return nil
}

// dirFiles are the files of an archive unpacked in a directory, such as an
// OCI layout written by buildx or skopeo. os.Root keeps every open inside it.
type dirFiles struct{ root *os.Root }

func (d dirFiles) Open(name string) (io.ReadCloser, int64, error) {
	name, err := cleanName(name)
	if err != nil {
		return nil, 0, err
	}
	f, err := d.root.Open(filepath.FromSlash(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, missing(name)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("%v: %w", err, errdefs.ErrInvalid)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s is not a regular file: %w", name, errdefs.ErrInvalid)
	}
	return f, fi.Size(), nil
}

func (d dirFiles) Has(name string) bool {
	fi, err := d.root.Stat(filepath.FromSlash(path.Clean(name)))
	return err == nil && fi.Mode().IsRegular()
}

func (d dirFiles) Close() error { return d.root.Close() }

// cleanName returns name in the form the archive's index uses, or an error
// when it leads outside the archive ("../x", "/x").
func cleanName(name string) (string, error) {
	clean := path.Clean(name)
	if !filepath.IsLocal(clean) {
		return "", fmt.Errorf("%q names a path outside the archive: %w", name, errdefs.ErrInvalid)
	}
	return clean, nil
}

func missing(name string) error {
	return fmt.Errorf("archive has no file %s: %w", name, errdefs.ErrInvalid)
}

// ctxReader stops a long copy when its context is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
