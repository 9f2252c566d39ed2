// Package driver defines the graph driver: the interface that every file
// system strata stores layers on implements, and the registry that picks one
// by name (registry.go), the naive diff any driver can fall back on
// (naive.go), and the bookkeeping all drivers share: mounts held across
// processes (mounts.go), the root lock (rootlock.go) and parent/child links
// (lineage.go).
//
// On disk a driver owns <root>/<name>/ and nothing else; what it keeps there
// is described in its own package.
package driver

import (
	"io"

	"github.com/strata-storage/strata/archive"
)

// CreateOpts are the per-layer options of Create.
type CreateOpts struct {
	MountLabel string
	StorageOpt map[string]string
}

// Capabilities tell callers what a driver allows.
type Capabilities struct {
	// ParallelApply is true when ApplyDiff never reads the parent's content,
	// so a child may be created and applied while its parent is still being
	// applied (overlay writes into its own upper dir; vfs copies the parent).
	ParallelApply bool
	// DurableReadWrite is true when CreateReadWrite returns a layer that is
	// already durable, made so at a cost that does not grow with the other
	// writers of the file system (a few fsyncs, a pool commit, a btrfs
	// snapshot's own commit); otherwise the caller makes it durable with
	// SyncFS before it records the layer.
	DurableReadWrite bool
}

// ProtoDriver is the seed's graph driver, brought up to date.
type ProtoDriver interface {
	// String returns the driver's name.
	String() string
	// Create makes a read-only layer id on top of parent ("" = none).
	// Neither Create nor ApplyDiff syncs: the caller makes what it built
	// durable with one SyncFS of the driver root before it records the
	// layer anywhere, and removes what it never recorded after a crash.
	Create(id, parent string, opts *CreateOpts) error
	// CreateReadWrite makes a read-write (container) layer, durable on
	// return when Capabilities().DurableReadWrite.
	CreateReadWrite(id, parent string, opts *CreateOpts) error
	// Remove deletes a layer; it fails with errdefs.ErrInUse while the layer
	// has children or is mounted.
	Remove(id string) error
	// Get mounts the layer and returns its root path. The reference it
	// takes belongs to this process: Put or Cleanup releases it, and if the
	// process dies the next start of the driver does. Mounts are shared by
	// every process using the root: the last reference anywhere unmounts.
	Get(id, mountLabel string) (string, error)
	// Put releases one reference taken by Get in this process.
	Put(id string) error
	// Pin mounts the layer like Get, with a reference that outlives the
	// process: `strata mount` holds one until `strata umount` (Unpin).
	Pin(id, mountLabel string) (string, error)
	// Unpin releases one reference taken by Pin, in any process.
	Unpin(id string) error
	// Mounted returns the number of references held on id by all processes
	// (pins included), for "refused while mounted" checks.
	Mounted(id string) (int, error)
	Exists(id string) bool
	// Status returns low-level diagnostics as key/value pairs.
	Status() [][2]string
	// Metadata returns driver details of one layer (e.g. overlay dirs).
	Metadata(id string) (map[string]string, error)
	Capabilities() Capabilities
	// Cleanup releases everything the driver holds, e.g. unmounts all.
	Cleanup() error
}

// DiffDriver produces and consumes layer tars.
type DiffDriver interface {
	// Diff returns the layer tar of id against parent.
	Diff(id, parent string) (io.ReadCloser, error)
	// Changes lists what differs between id and parent.
	Changes(id, parent string) ([]archive.Change, error)
	// ApplyDiff extracts the uncompressed layer tar diff into layer id and
	// returns the bytes of content applied, counted as Docker counts a
	// layer's size: the lstat size of every entry but directories (file
	// content and symlink targets), each inode once.
	ApplyDiff(id, parent string, diff io.Reader) (int64, error)
	// DiffSize returns the bytes of content that differ from parent,
	// counted as ApplyDiff counts them.
	DiffSize(id, parent string) (int64, error)
}

// DiffCopier is a driver that can copy one layer's diff into a new layer in
// one pass, as a commit does: it reads each file once, writing it both to
// the tar and to the new layer, where ApplyDiff of the tar that Diff wrote
// would parse that tar again.
type DiffCopier interface {
	// CopyDiff writes the layer tar of from against fromParent to w, as
	// Diff does, and makes the new layer id (on parent) hold it, as
	// ApplyDiff of that tar would; it returns what ApplyDiff returns. It
	// fails with errdefs.ErrNotSupported, having done nothing, for layers
	// it cannot copy so.
	CopyDiff(id, parent, from, fromParent string, w archive.EntryWriter) (int64, error)
}

// Driver is a ProtoDriver with diff support, native or naive.
type Driver interface {
	ProtoDriver
	DiffDriver
}

// InitFunc makes a driver whose state lives in root (<store root>/<name>).
type InitFunc func(root string, options map[string]string) (Driver, error)
