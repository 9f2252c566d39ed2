// Package archive reads and writes layer tars: the unit in which image layers
// travel. API STUB: filled in by the archive work.
package archive

import (
	"errors"
	"io"
)

var errTODO = errors.New("archive: not implemented yet")

// Compression is the encoding of a layer stream.
type Compression int

const (
	Uncompressed Compression = iota
	Gzip
	Zstd
)

func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	}
	return "none"
}

// DecompressStream detects the compression of r from its first bytes and
// returns a reader of the uncompressed stream.
func DecompressStream(r io.Reader) (io.ReadCloser, Compression, error) {
	return nil, Uncompressed, errTODO
}

// WhiteoutFormat says how the whiteouts of a layer tar are stored on disk.
type WhiteoutFormat int

const (
	// WhiteoutDelete applies a whiteout by deleting the path it names: the
	// target directory is a full copy of the parent (vfs, naive drivers).
	WhiteoutDelete WhiteoutFormat = iota
	// WhiteoutOverlay stores whiteouts as 0/0 character devices and opaque
	// directories as trusted.overlay.opaque=y: the target is an overlay upper dir.
	WhiteoutOverlay
	// WhiteoutAUFS keeps .wh.<name> and .wh..wh..opq files as they are.
	WhiteoutAUFS
)

// ApplyOptions tune Apply.
type ApplyOptions struct {
	Whiteouts WhiteoutFormat
}

// Apply extracts the uncompressed layer tar r into dir and returns the
// number of bytes of regular-file content written.
func Apply(dir string, r io.Reader, opts ApplyOptions) (int64, error) {
	return 0, errTODO
}

// ChangeKind is the kind of a Change, printed as docker diff prints it.
type ChangeKind int

const (
	ChangeModify ChangeKind = iota
	ChangeAdd
	ChangeDelete
)

func (k ChangeKind) String() string {
	switch k {
	case ChangeAdd:
		return "A"
	case ChangeDelete:
		return "D"
	}
	return "C"
}

// Change is one path that differs between a layer and its parent.
type Change struct {
	Path string // absolute within the layer, e.g. "/etc/passwd"
	Kind ChangeKind
}

// Changes compares the tree at dir with the tree at parentDir ("" = empty).
func Changes(parentDir, dir string) ([]Change, error) {
	return nil, errTODO
}

// WriteChanges writes a layer tar of changes to w, reading content from dir.
func WriteChanges(w io.Writer, dir string, changes []Change) error {
	return errTODO
}

// WriteOptions tune WriteDir.
type WriteOptions struct {
	// Whiteouts says how whiteouts are stored in dir: WhiteoutOverlay
	// translates 0/0 devices and opaque xattrs into .wh. entries.
	Whiteouts WhiteoutFormat
}

// WriteDir writes the tree at dir as a layer tar to w.
func WriteDir(w io.Writer, dir string, opts WriteOptions) error {
	return errTODO
}
