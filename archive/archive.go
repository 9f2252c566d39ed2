// Package archive reads and writes layer tars: the unit in which image layers
// travel.
//
// A layer tar holds the files a layer adds or changes, with owners, modes,
// nanosecond times (PAX) and extended attributes (PAX SCHILY.xattr.*), and
// marks what it removes with whiteouts:
//
//	dir/.wh.name       name was deleted from dir
//	dir/.wh..wh..opq   dir is opaque: nothing of the lower layers shows through
//
// On disk a whiteout is stored the way the driver needs it (see
// WhiteoutFormat). The package has no state of its own on disk.
package archive

// Whiteout names, as in the layer tars of Docker and OCI images.
const (
	whiteoutPrefix = ".wh."
	// whiteoutMeta starts the names aufs keeps for itself (.wh..wh.plnk,
	// .wh..wh.aufs, .wh..wh.orph); they never describe image content.
	whiteoutMeta = whiteoutPrefix + whiteoutPrefix
	opaqueMarker = whiteoutMeta + ".opq"
)

// Overlayfs marks an opaque directory with this xattr set to "y".
const overlayOpaqueXattr = "trusted.overlay.opaque"

// overlayXattrPrefix is the namespace overlayfs keeps for itself; its
// attributes describe the upper directory, not the image, so tars never carry them.
const overlayXattrPrefix = "trusted.overlay."

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

// WriteOptions tune WriteDir.
type WriteOptions struct {
	// Whiteouts says how whiteouts are stored in dir: WhiteoutOverlay
	// translates 0/0 devices and opaque xattrs into .wh. entries.
	Whiteouts WhiteoutFormat
}
