package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
)

// copyBufferSize is the one buffer an Apply copies file content through.
const copyBufferSize = 1 << 20

// Apply extracts the uncompressed layer tar r into dir and returns the
// number of bytes of regular-file content written.
//
// Names are taken relative to dir (a leading "/" is dropped); a name, link
// target or whiteout that would lead outside dir, a path written twice and a
// corrupt or truncated tar fail with an error wrapping errdefs.ErrInvalid,
// and nothing is ever written outside dir. Symlinks in parent components are
// followed as a chroot into dir would follow them. The stream is read to its
// end, padding after the end-of-archive marker included, so that a caller
// hashing r sees every byte. Apply does not sync: callers sync the file
// system once.
func Apply(dir string, r io.Reader, opts ApplyOptions) (int64, error) {
	a, err := newApplier(dir, opts)
	if err != nil {
		return 0, err
	}
	return a.finish(a.apply(r))
}

func newApplier(dir string, opts ApplyOptions) (*applier, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("apply layer: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("apply layer: %s is not a directory: %w", dir, errdefs.ErrInvalid)
	}
	a := &applier{
		root:    dir,
		format:  opts.Whiteouts,
		isRoot:  os.Geteuid() == 0,
		buf:     make([]byte, copyBufferSize),
		dirs:    map[string]string{".": ""},
		written: map[string]mark{"": markedParent},
	}
	a.files = newFileWriters(a)
	return a, nil
}

// finish waits for the file writers, then sets the directories' times; err
// is the error of the entries, if any.
func (a *applier) finish(err error) (int64, error) {
	if cerr := a.files.close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = a.setDirTimes()
	}
	if err != nil {
		return a.size, fmt.Errorf("apply layer: %w", err)
	}
	return a.size, nil
}

// applier is the state of one Apply.
type applier struct {
	root   string
	format WhiteoutFormat
	isRoot bool
	buf    []byte
	size   int64
	files  *fileWriters

	// dirs maps the clean tar name of a directory to its real path relative
	// to root, for every directory resolved so far.
	dirs map[string]string
	// written marks the real paths (relative to root) this layer created or
	// wrote into: they decide duplicates and what an opaque whiteout keeps.
	written map[string]mark
	// dirTimes are set last: creating children changes a directory's mtime.
	dirTimes []dirTime
}

// mark says what this layer did to a path.
type mark uint8

const (
	unmarked       mark = iota
	markedWhiteout      // a whiteout for the path was applied
	markedParent        // a directory this layer wrote into
	markedLink          // a symlink this layer followed to write
	markedDir           // a directory entry
	markedFile          // any other entry
)

type dirTime struct {
	path string
	ts   [2]unix.Timespec
}

func (a *applier) apply(r io.Reader) error {
	cr := &countingReader{r: r}
	tr := tar.NewReader(cr)
	for {
		before := cr.n
		hdr, err := tr.Next()
		if err == io.EOF {
			// The reader consumed the last entry's padding (under one
			// block) and the end-of-archive block(s): at least a block.
			if cr.n-before < blockSize {
				return invalid("layer tar is truncated: no end-of-archive marker")
			}
			break
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return fmt.Errorf("read layer tar: %w", streamErr(err))
		}
		if err := a.entry(hdr, tr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		// Leave nothing of the entry unread, so that the count above
		// only ever sees padding and end-of-archive blocks.
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return fmt.Errorf("read layer tar: %w", streamErr(err))
		}
	}
	// Callers hash the whole stream: read the padding after the end too.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("read layer tar: %w", err)
	}
	return nil
}

// setDirTimes sets the times of the directories, once nothing is written
// in them any more.
func (a *applier) setDirTimes() error {
	for _, d := range a.dirTimes {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, d.path, d.ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("set times of %s: %w", d.path, err)
		}
	}
	return nil
}

const blockSize = 512

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// streamErr marks the errors of a truncated or malformed tar as invalid
// input and passes on the others.
func streamErr(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, tar.ErrHeader) || errors.Is(err, tar.ErrFieldTooLong) {
		return fmt.Errorf("truncated or corrupt: %w: %w", err, errdefs.ErrInvalid)
	}
	return err
}

// invalid formats an error that wraps errdefs.ErrInvalid.
func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalid)...)
}

func (a *applier) entry(hdr *tar.Header, r io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if isAUFSMeta(name) {
		return nil
	}
	base := path.Base(name)
	if a.format != WhiteoutAUFS && strings.HasPrefix(base, whiteoutPrefix) {
		return a.whiteout(path.Dir(name), base, hdr)
	}
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return invalid("the layer root must be a directory")
		}
		return a.dir("", hdr)
	}
	parent, err := a.resolveDir(path.Dir(name), true)
	if err != nil {
		return err
	}
	p := join(parent, base)
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		return a.regular(p, hdr, r)
	case tar.TypeDir:
		if err := a.dir(p, hdr); err != nil {
			return err
		}
		a.dirs[name] = p
		return nil
	case tar.TypeSymlink:
		return a.symlink(p, hdr)
	case tar.TypeLink:
		return a.hardlink(p, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return a.node(p, hdr)
	}
	return invalid("unsupported entry type %q", hdr.Typeflag)
}

// cleanName turns a tar name into a clean path relative to the root:
// "/etc/x", "./etc/x" and "etc/x/" all become "etc/x", the root is ".".
func cleanName(name string) (string, error) {
	clean := path.Clean(strings.TrimLeft(name, "/"))
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", invalid("path leads outside the layer root")
	}
	return clean, nil
}

// isAUFSMeta reports whether name lies in one of the directories aufs keeps
// for itself at the root of a layer (.wh..wh.plnk and the like).
func isAUFSMeta(name string) bool {
	first, _, _ := strings.Cut(name, "/")
	return strings.HasPrefix(first, whiteoutMeta) && first != opaqueMarker
}

func (a *applier) full(p string) string {
	if p == "" {
		return a.root
	}
	return a.root + "/" + p
}

// claim records that an entry of kind m is written at p, refusing one that
// would overwrite what this layer already wrote.
func (a *applier) claim(p string, m mark) error {
	old := a.written[p]
	ok := old == unmarked
	switch m {
	case markedDir:
		ok = old != markedLink && old != markedFile
	case markedFile:
		ok = old == unmarked || old == markedWhiteout
	}
	if !ok {
		return invalid("/%s is written twice by the layer", p)
	}
	a.written[p] = m
	return nil
}

// replace runs create; when the path exists it removes what is there, unless
// both are directories, and runs create once more.
func replace(full string, isDir bool, create func() error) error {
	err := create()
	if !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(full)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		if isDir {
			return nil
		}
		err = os.RemoveAll(full)
	} else {
		err = os.Remove(full)
	}
	if err != nil {
		return err
	}
	return create()
}
