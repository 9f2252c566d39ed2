// Package vfs is the driver that needs nothing from the file system: every
// layer is a full copy of its parent, made with reflinks where the file
// system shares blocks (btrfs, xfs), else copy_file_range, else read/write.
//
// On disk, under the driver root:
//
//	dir/<id>/              the layer's complete tree
//	meta/<id>/parent       the parent id (absent for a base layer)
//	meta/<id>/children/<c> one empty marker per child layer
//	meta/<id>/copied       its ctime is when the copy of the parent was complete
//	dir/.tmp-<id>, meta/.tmp-<id>, dir/.removing-<id>
//	                       staging names; a crash leaves only these, and
//	                       New removes them when no other process uses the root
//	.lock                  held shared by every process using the root (driver.RootLock)
//	.procs/<token>         one per process using the root (driver.Mounts)
//	.mounts/<id>/          who holds layer id: processes and pins (driver.Mounts);
//	                       nothing is mounted, but Remove refuses a held layer
//
// A layer exists once dir/<id> does; meta/<id> is written before it and
// removed after it.
package vfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
	"golang.org/x/sys/unix"
)

const name = "vfs"

func init() {
	driver.Register(name, New)
}

// Driver is the vfs graph driver.
type Driver struct {
	// The naive diff, built over this Driver: it supplies Diff, Changes,
	// ApplyDiff and DiffSize; the methods below shadow the rest.
	driver.Driver

	root    string
	lineage driver.Lineage
	mounts  *driver.Mounts
	reflink bool
	held    *driver.Root // d.mounts is held.Mounts
	refs    driver.Unmounted

	mu     sync.Mutex // serializes Create and Remove
	method copyMethod // guarded by mu
}

// New starts a vfs driver with its state in root. It takes no options.
func New(root string, options map[string]string) (driver.Driver, error) {
	if err := driver.CheckOptions(name, options); err != nil {
		return nil, err
	}
	for _, sub := range []string{"dir", "meta"} {
		if err := os.MkdirAll(filepath.Join(root, sub), 0o700); err != nil {
			return nil, err
		}
	}
	d := &Driver{root: root}
	d.lineage = driver.Lineage{Dir: d.metaDir, Exists: d.Exists}
	d.Driver = driver.NaiveDiff(d)
	// When alone: remove a crash's leftovers.
	held, err := driver.OpenRoot(root, func(*driver.Mounts) error { return d.removeLeftovers() })
	if err != nil {
		return nil, err
	}
	d.held, d.mounts = held, held.Mounts
	d.refs = driver.NewUnmounted(d.mounts, d.dir, d.Exists)
	d.reflink = probeReflink(filepath.Join(root, "dir"))
	if !d.reflink {
		d.method = copyRange
	}
	return d, nil
}

func (d *Driver) dir(id string) string     { return filepath.Join(d.root, "dir", id) }
func (d *Driver) metaDir(id string) string { return filepath.Join(d.root, "meta", id) }

// removeLeftovers deletes what a crash mid-Create or mid-Remove left behind.
func (d *Driver) removeLeftovers() error {
	for _, sub := range []string{"dir", "meta"} {
		entries, err := os.ReadDir(filepath.Join(d.root, sub))
		if err != nil {
			return err
		}
		for _, e := range entries {
			orphan := sub == "meta" && !d.Exists(e.Name())
			if strings.HasPrefix(e.Name(), ".") || orphan {
				if err := os.RemoveAll(filepath.Join(d.root, sub, e.Name())); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// probeReflink reports whether FICLONE works in dir; its files are
// hidden names, removed at the next start if a crash leaves them.
func probeReflink(root string) bool {
	src, err := os.CreateTemp(root, ".reflink-")
	if err != nil {
		return false
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.WriteString("probe"); err != nil {
		return false
	}
	dst, err := os.CreateTemp(root, ".reflink-")
	if err != nil {
		return false
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil
}

func (d *Driver) String() string { return name }

func (d *Driver) Create(id, parent string, opts *driver.CreateOpts) error {
	return d.create(id, parent, opts)
}

// CreateReadWrite is Create: every vfs layer is a writable directory.
func (d *Driver) CreateReadWrite(id, parent string, opts *driver.CreateOpts) error {
	return d.create(id, parent, opts)
}

func (d *Driver) create(id, parent string, opts *driver.CreateOpts) error {
	if err := driver.ValidID(id); err != nil {
		return err
	}
	if opts != nil && len(opts.StorageOpt) > 0 {
		return fmt.Errorf("create layer %s: vfs takes no per-layer storage options: %w", id, errdefs.ErrNotSupported)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.Exists(id) {
		return fmt.Errorf("create layer %s: %w", id, errdefs.ErrExists)
	}
	if parent != "" && !d.Exists(parent) {
		return fmt.Errorf("create layer %s: parent %s: %w", id, parent, errdefs.ErrNotFound)
	}

	if parent != "" {
		if err := d.lineage.Adopt(parent, id); err != nil {
			return fmt.Errorf("create layer %s: %w", id, err)
		}
	}
	if err := d.stage(id, parent); err != nil {
		os.RemoveAll(d.dir(".tmp-" + id))
		os.RemoveAll(d.metaDir(".tmp-" + id))
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	return nil
}

// stage builds the layer under staging names and renames it into place,
// meta first: the rename of dir/<id> is the moment the layer exists.
func (d *Driver) stage(id, parent string) error {
	meta, tmpMeta := d.metaDir(id), d.metaDir(".tmp-"+id)
	dir, tmpDir := d.dir(id), d.dir(".tmp-"+id)
	os.RemoveAll(meta) // an orphan of a crash mid-Remove
	if err := os.Mkdir(tmpMeta, 0o700); err != nil {
		return err
	}
	if err := driver.WriteParent(tmpMeta, parent); err != nil {
		return err
	}
	if err := os.Rename(tmpMeta, meta); err != nil {
		return err
	}

	if parent == "" {
		if err := os.Mkdir(tmpDir, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(tmpDir, 0o755); err != nil { // whatever the umask
			return err
		}
	} else {
		if err := copyTree(d.dir(parent), tmpDir, &d.method); err != nil {
			return err
		}
		if err := markCopied(meta); err != nil {
			return err
		}
	}
	if err := os.Rename(tmpDir, dir); err != nil {
		return err
	}
	return nil // durable at the caller's SyncFS, see driver.ProtoDriver.Create
}

// markCopied records when the copy of the parent was complete, as the ctime
// of meta/<id>/copied (see CopyTime). It waits for the kernel's coarse
// clock to tick first, so that every copied file is strictly older.
func markCopied(meta string) error {
	time.Sleep(copyTick)
	f, err := os.Create(filepath.Join(meta, "copied"))
	if err != nil {
		return err
	}
	return f.Close()
}

// copyTick is longer than a tick of the clock that stamps ctimes (HZ >= 100).
const copyTick = 10 * time.Millisecond

// CopyTime returns when layer id's copy of its parent was complete, for the
// naive diff: a path whose ctime is not before it changed in the layer.
func (d *Driver) CopyTime(id string) (time.Time, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(d.metaDir(id), "copied"), &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return time.Time{}, nil // a base layer: everything in it is its own
		}
		return time.Time{}, fmt.Errorf("copy time of layer %s: %w", id, err)
	}
	return time.Unix(st.Ctim.Unix()), nil
}

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
		removing := d.dir(".removing-" + id)
		if err := os.Rename(d.dir(id), removing); err != nil {
			return fmt.Errorf("remove layer %s: %w", id, err)
		}
		if parent != "" {
			if err := d.lineage.Disown(parent, id); err != nil {
				return fmt.Errorf("remove layer %s: %w", id, err)
			}
		}
		if err := errors.Join(os.RemoveAll(d.metaDir(id)), os.RemoveAll(removing)); err != nil {
			return fmt.Errorf("remove layer %s: %w", id, err)
		}
		return nil
	})
}

func unmountNothing(string) error { return nil }

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

func (d *Driver) Status() [][2]string {
	return [][2]string{
		{"Backing Filesystem", driver.BackingFS(d.root)},
		{"Reflink", strconv.FormatBool(d.reflink)},
	}
}

func (d *Driver) Metadata(id string) (map[string]string, error) {
	if !d.Exists(id) {
		return nil, fmt.Errorf("layer %s: %w", id, errdefs.ErrNotFound)
	}
	return map[string]string{"Dir": d.dir(id)}, nil
}

// Capabilities: a child's Create copies its parent, so the parent must be
// complete first.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{ParallelApply: false}
}

// Cleanup releases this process's references (vfs mounts nothing) and the
// root; pins stay.
func (d *Driver) Cleanup() error {
	return d.held.Close(unmountNothing)
}
