// Package btrfs is the driver that lets the file system do the layering:
// every layer is a btrfs subvolume, and a child is a snapshot of its
// parent's, made in one ioctl whatever the size of the tree. Layers made by
// Create turn read-only once ApplyDiff has filled them (each change of the
// flag costs a transaction commit, so it is set once, after the content);
// the read-write layers of containers are writable snapshots, optionally
// capped in size by a qgroup limit. Nothing is mounted: Get returns the
// subvolume's directory. Diffs compare a snapshot with its parent, whose
// unchanged files are the same inodes (driver.NaiveDiff).
//
// On disk, under the driver root, which must be on btrfs:
//
//	subvolumes/<id>        the layer's subvolume
//	meta/<id>/parent       the parent id (absent for a base layer)
//	meta/<id>/children/<c> one empty marker per child layer
//	meta/<id>/committed    present for layers made by Create: ApplyDiff
//	                       makes them read-only
//	meta/.tmp-<id>         staging name of meta/<id>; a crash leaves it, and
//	                       New removes it when no other process uses the root
//	.lock                  held shared by every process using the root (driver.RootLock)
//	.procs/<token>         one per process using the root (driver.Mounts)
//	.mounts/<id>/          who holds layer id: processes and pins (driver.Mounts);
//	                       nothing is mounted, but Remove refuses a held layer
//
// A layer exists once subvolumes/<id> does; meta/<id> is written before it
// and removed after it. Subvolumes that a container made inside its own
// are found in the root tree and deleted with it.
package btrfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
)

const name = "btrfs"

func init() {
	driver.Register(name, New)
}

// sizeOption caps the size of a read-write layer: per layer in
// CreateOpts.StorageOpt, or for every read-write layer as a driver option.
const sizeOption = "size"

// Driver is the btrfs graph driver.
type Driver struct {
	// The naive diff, built over this Driver: it supplies Diff and
	// Changes; the methods below shadow the rest.
	driver.Driver

	root        string
	lineage     driver.Lineage
	mounts      *driver.Mounts
	held        *driver.Root // d.mounts is held.Mounts
	refs        driver.Unmounted
	defaultSize uint64 // 0 = no limit

	mu sync.Mutex // serializes Create and Remove, and turning quota on
}

// New starts a btrfs driver with its state in root. It fails with
// errdefs.ErrNotSupported when root is not on btrfs. Its one option is
// size, the default size limit of read-write layers.
func New(root string, options map[string]string) (driver.Driver, error) {
	if err := driver.CheckOptions(name, options, sizeOption); err != nil {
		return nil, err
	}
	d := &Driver{root: root}
	if s, ok := options[sizeOption]; ok {
		size, err := parseSize(s)
		if err != nil {
			return nil, fmt.Errorf("storage driver %s: %w", name, err)
		}
		d.defaultSize = size
	}
	if err := checkBtrfs(root); err != nil {
		return nil, err
	}
	for _, sub := range []string{"subvolumes", "meta"} {
		if err := os.MkdirAll(filepath.Join(root, sub), 0o700); err != nil {
			return nil, err
		}
	}
	d.lineage = driver.Lineage{Dir: d.metaDir, Exists: d.Exists}
	d.Driver = driver.NaiveDiff(d)
	// When alone: remove a crash's leftovers.
	held, err := driver.OpenRoot(root, func(*driver.Mounts) error { return d.removeLeftovers() })
	if err != nil {
		return nil, err
	}
	d.held, d.mounts = held, held.Mounts
	d.refs = driver.NewUnmounted(d.mounts, d.dir, d.Exists)
	return d, nil
}

// checkBtrfs fails with errdefs.ErrNotSupported unless root, or the
// nearest directory above it that exists, is on btrfs.
func checkBtrfs(root string) error {
	dir := root
	var st unix.Statfs_t
	for {
		err := unix.Statfs(dir, &st)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.ENOENT) || filepath.Dir(dir) == dir {
			return fmt.Errorf("storage driver %s: %w", name, os.NewSyscallError("statfs "+dir, err))
		}
		dir = filepath.Dir(dir)
	}
	if st.Type != unix.BTRFS_SUPER_MAGIC {
		return fmt.Errorf("storage driver %s not supported here: %s is on %s: %w", name, root, fsType(dir), errdefs.ErrNotSupported)
	}
	return nil
}

// fsType names the file system of the mount holding dir as mount(8) does.
func fsType(dir string) string {
	mounts, err := mountinfo.GetMounts(mountinfo.ParentsFilter(dir))
	if err != nil || len(mounts) == 0 {
		return driver.BackingFS(dir)
	}
	best := mounts[0]
	for _, m := range mounts[1:] {
		if len(m.Mountpoint) >= len(best.Mountpoint) { // the last of equals is on top
			best = m
		}
	}
	return best.FSType
}

func (d *Driver) dir(id string) string     { return filepath.Join(d.root, "subvolumes", id) }
func (d *Driver) metaDir(id string) string { return filepath.Join(d.root, "meta", id) }

// removeLeftovers deletes what a crash mid-Create or mid-Remove left in
// meta/: staging dirs, and the meta of layers whose subvolume is gone.
func (d *Driver) removeLeftovers() error {
	entries, err := os.ReadDir(filepath.Join(d.root, "meta"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || !d.Exists(e.Name()) {
			if err := os.RemoveAll(d.metaDir(e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *Driver) String() string { return name }

// Create makes a layer that ApplyDiff fills and then makes read-only: a
// snapshot of parent, or an empty subvolume.
func (d *Driver) Create(id, parent string, opts *driver.CreateOpts) error {
	return d.create(id, parent, opts, false)
}

// CreateReadWrite makes a writable layer, limited in size when the
// storage option size (or the driver's) says so.
func (d *Driver) CreateReadWrite(id, parent string, opts *driver.CreateOpts) error {
	return d.create(id, parent, opts, true)
}

func (d *Driver) create(id, parent string, opts *driver.CreateOpts, writable bool) error {
	if err := driver.ValidID(id); err != nil {
		return err
	}
	size, err := d.sizeLimit(opts, writable)
	if err != nil {
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.Exists(id) {
		return fmt.Errorf("create layer %s: %w", id, errdefs.ErrExists)
	}
	if parent != "" && !d.Exists(parent) {
		return fmt.Errorf("create layer %s: parent %s: %w", id, parent, errdefs.ErrNotFound)
	}
	if size > 0 {
		if err := d.ensureQuota(); err != nil {
			return fmt.Errorf("create layer %s: %w", id, err)
		}
	}
	if parent != "" {
		if err := d.lineage.Adopt(parent, id); err != nil {
			return fmt.Errorf("create layer %s: %w", id, err)
		}
	}
	if err := d.build(id, parent, size, writable); err != nil {
		if d.Exists(id) {
			destroyTree(d.dir(id))
		}
		os.RemoveAll(d.metaDir(id))
		os.RemoveAll(d.metaDir(".tmp-" + id))
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	return nil // a read-only layer is durable at the caller's SyncFS, see driver.ProtoDriver.Create
}

// sizeLimit returns the size limit asked for a new layer, 0 for none.
func (d *Driver) sizeLimit(opts *driver.CreateOpts, writable bool) (uint64, error) {
	if opts == nil || len(opts.StorageOpt) == 0 {
		if writable {
			return d.defaultSize, nil
		}
		return 0, nil
	}
	if err := driver.CheckOptions(name, opts.StorageOpt, sizeOption); err != nil {
		return 0, err
	}
	return parseSize(opts.StorageOpt[sizeOption])
}

// ensureQuota turns quota on unless it is. Call it with d.mu held.
func (d *Driver) ensureQuota() error {
	var state quotaState
	err := withDir(d.root, func(fd uintptr) (err error) {
		state, err = readQuotaState(fd)
		return err
	})
	if err == nil && !state.on {
		err = enableQuota(d.root)
	}
	if err != nil {
		return fmt.Errorf("a size limit needs btrfs quota, which cannot be turned on for %s: %v: %w", d.root, err, errdefs.ErrNotSupported)
	}
	return nil
}

// build writes meta/<id> under a staging name, then makes the subvolume:
// its appearance is the moment the layer exists.
func (d *Driver) build(id, parent string, size uint64, writable bool) error {
	meta, tmpMeta := d.metaDir(id), d.metaDir(".tmp-"+id)
	os.RemoveAll(meta) // an orphan of a crash mid-Remove
	if err := os.Mkdir(tmpMeta, 0o700); err != nil {
		return err
	}
	var err error
	if writable && parent != "" {
		// The snapshot below commits a transaction, which makes every
		// entry made here durable, but not file data: that needs an fsync.
		err = driver.SyncWriteFile(filepath.Join(tmpMeta, "parent"), []byte(parent))
	} else {
		err = driver.WriteParent(tmpMeta, parent)
	}
	if err != nil {
		return err
	}
	if !writable {
		if err := os.WriteFile(filepath.Join(tmpMeta, committedMarker), nil, 0o600); err != nil {
			return err
		}
	}
	if err := os.Rename(tmpMeta, meta); err != nil {
		return err
	}

	dir := d.dir(id)
	if parent != "" {
		if err := snapshotSubvolume(d.dir(parent), dir, false); err != nil {
			return err
		}
	} else {
		if err := createSubvolume(dir); err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o755); err != nil { // whatever the umask
			return err
		}
	}
	if size > 0 {
		if err := limitSubvolume(dir, size); err != nil {
			return err
		}
	}
	if writable && (parent == "" || size > 0) {
		// A new subvolume or a qgroup limit waits for the next commit.
		return driver.SyncFS(d.root)
	}
	return nil // a snapshot's ioctl commits (Capabilities)
}

// committedMarker in meta/<id> marks a layer made by Create.
const committedMarker = "committed"

func (d *Driver) Remove(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.Exists(id) {
		return fmt.Errorf("remove layer %s: %w", id, errdefs.ErrNotFound)
	}
	return d.mounts.IfUnused(id, func() error {
		if err := d.lineage.CheckRemovable(id); err != nil {
			return err
		}
		parent, err := d.lineage.Parent(id)
		if err != nil {
			return fmt.Errorf("remove layer %s: %w", id, err)
		}
		if err := destroyTree(d.dir(id)); err != nil {
			return fmt.Errorf("remove layer %s: %w", id, err)
		}
		if parent != "" {
			if err := d.lineage.Disown(parent, id); err != nil {
				return fmt.Errorf("remove layer %s: %w", id, err)
			}
		}
		if err := os.RemoveAll(d.metaDir(id)); err != nil {
			return fmt.Errorf("remove layer %s: %w", id, err)
		}
		return nil
	})
}

// Get returns the layer's directory; nothing is mounted, but references
// are counted (driver.Unmounted) so that Remove refuses a layer in use.
func (d *Driver) Get(id, mountLabel string) (string, error) { return d.refs.Get(id, mountLabel) }
func (d *Driver) Put(id string) error                       { return d.refs.Put(id) }
func (d *Driver) Pin(id, mountLabel string) (string, error) { return d.refs.Pin(id, mountLabel) }
func (d *Driver) Unpin(id string) error                     { return d.refs.Unpin(id) }
func (d *Driver) Mounted(id string) (int, error)            { return d.refs.Mounted(id) }

func (d *Driver) Exists(id string) bool {
	if driver.ValidID(id) != nil {
		return false
	}
	_, err := os.Lstat(d.dir(id))
	return err == nil
}

func (d *Driver) Metadata(id string) (map[string]string, error) {
	if !d.Exists(id) {
		return nil, fmt.Errorf("layer %s: %w", id, errdefs.ErrNotFound)
	}
	dir := d.dir(id)
	var subvol uint64
	if err := withDir(dir, func(fd uintptr) (err error) {
		subvol, err = subvolumeID(fd)
		return err
	}); err != nil {
		return nil, fmt.Errorf("layer %s: %w", id, err)
	}
	ro, err := readOnly(dir)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", id, err)
	}
	return map[string]string{
		"Dir":         dir,
		"SubvolumeID": strconv.FormatUint(subvol, 10),
		"ReadOnly":    strconv.FormatBool(ro),
	}, nil
}

// Capabilities: a child is a snapshot of its parent, so the parent must be
// complete first; the snapshot ioctl commits a transaction, which makes a
// read-write layer durable at once.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{ParallelApply: false, DurableReadWrite: true}
}

// Cleanup releases this process's references (btrfs mounts nothing) and
// the root; pins stay.
func (d *Driver) Cleanup() error {
	return d.held.Close(func(string) error { return nil })
}
