package devicemapper

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/archive"
)

// keepFor is how long an applied layer stays mounted for a child that
// nobody creates: a load creates the next layer at once.
const keepFor = time.Second

// kept is a layer that ApplyDiff left mounted, durable, with no holder:
// when the next create makes a child of it, the child takes over its
// mounted device and the layer gets the snapshot (create), so that a load
// mounts one file system for the whole chain and each layer is applied
// with the page cache of the layers below it, instead of reading them back
// through the pool. It is this process's alone and invisible to the others:
// one that gets the layer meanwhile mounts it over, and the hand-over is
// refused when the mount is no longer ours.
type kept struct {
	id    string
	dev   uint64 // the mounted file system's device number
	timer *time.Timer
}

// ApplyDiff extracts diff into layer id, makes it durable and leaves the
// layer mounted for a child (kept).
func (d *Driver) ApplyDiff(id, parent string, diff io.Reader) (int64, error) {
	dir, err := d.Get(id, "")
	if err != nil {
		return 0, err
	}
	n, err := archive.Apply(dir, diff, archive.ApplyOptions{Whiteouts: archive.WhiteoutDelete})
	if err == nil {
		err = settle(dir)
	}
	var st unix.Stat_t
	if err == nil {
		err = unix.Stat(dir, &st)
	}
	if err != nil {
		return n, errors.Join(err, d.Put(id))
	}
	last := false
	if err := d.mounts.Release(id, func() error { last = true; return nil }); err != nil {
		return n, err
	}
	if last {
		d.keep(id, st.Dev)
	}
	return n, nil
}

// settle makes the file system mounted at dir durable and clean on its
// device, as an unmount would, by freezing and thawing it: a freeze writes
// everything back, checkpoints the journal and flushes the device (a pool
// commit), so that the freeze of the snapshot for a child finds nothing
// left to do. A syncfs would leave the journal for that freeze to write
// again.
func settle(dir string) error {
	const fiFreeze, fiThaw = 0xc0045877, 0xc0045878 // _IOWR('X', 119 and 120, int)
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), fiFreeze, 0); err != nil {
		return fmt.Errorf("freeze %s: %w", dir, err)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), fiThaw, 0); err != nil {
		return fmt.Errorf("thaw %s: %w", dir, err)
	}
	return nil
}

// keep makes layer id, mounted with no holder, the kept layer, and
// releases the one kept before.
func (d *Driver) keep(id string, dev uint64) {
	k := &kept{id: id, dev: dev}
	d.mu.Lock()
	old := d.kept
	d.kept = k
	k.timer = time.AfterFunc(keepFor, func() {
		if d.unkeep(k) {
			d.drop(k.id)
		}
	})
	d.mu.Unlock()
	if old != nil && d.unkeep(old) {
		d.drop(old.id)
	}
}

// unkeep stops keeping k, and tells whether it was kept.
func (d *Driver) unkeep(k *kept) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if k == nil || d.kept != k {
		return false
	}
	d.kept = nil
	k.timer.Stop()
	return true
}

// take returns the kept layer if it is id and still mounted as it was
// left, and no longer keeps it; nil otherwise.
func (d *Driver) take(id string) *kept {
	d.mu.Lock()
	k := d.kept
	d.mu.Unlock()
	if k == nil || k.id != id || !d.unkeep(k) {
		return nil
	}
	var st unix.Stat_t
	if unix.Stat(d.mountDir(id), &st) != nil || st.Dev != k.dev {
		return nil
	}
	return k
}

// drop unmounts layer id, which was kept, unless a holder uses it now: it
// mounted it over.
func (d *Driver) drop(id string) {
	d.mounts.IfUnused(id, func() error { return d.unmount(id) })
}

// releaseKept unmounts the kept layer if it is id, or whichever it is when
// id is "".
func (d *Driver) releaseKept(id string) {
	d.mu.Lock()
	k := d.kept
	d.mu.Unlock()
	if k != nil && (id == "" || k.id == id) && d.unkeep(k) {
		d.drop(k.id)
	}
}

// handOver moves the kept mount of parent, now child's device, to child's
// mount point, and keeps child. On failure the mount is dropped: child's
// device is unmounted and deactivated, as after any create.
func (d *Driver) handOver(parent, child string, dev uint64) {
	from, to := d.mountDir(parent), d.mountDir(child)
	err := os.Mkdir(to, 0o700)
	if err == nil || errors.Is(err, os.ErrExist) {
		err = unix.Mount(from, to, "", unix.MS_BIND, "")
	}
	unmountDir(from)
	if err != nil {
		d.unmount(child)
		return
	}
	d.keep(child, dev)
}
