package devicemapper

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/thinp"
	"github.com/strata-storage/strata/thinp/server"
)

// deviceSet is what the driver keeps of the pool as a whole. It is a hint:
// an id found taken is skipped. The transaction id is the pool's own.
type deviceSet struct {
	NextDeviceID uint32 `json:"next_device_id"`
}

// transaction is the record of a device being created or deleted.
type transaction struct {
	Op            string `json:"op"` // "create" or "delete"
	ID            string `json:"device_hash"`
	DeviceID      uint32 `json:"device_id"`
	TransactionID uint64 `json:"open_transaction_id"`
	// A create that hands the parent's mounted device over to the child
	// (keep.go) names the parent and its device: the child's record takes
	// that device, the parent's the snapshot (DeviceID).
	Parent       string `json:"handed_over_by,omitempty"`
	ParentDevice uint32 `json:"handed_over_device,omitempty"`
}

func (d *Driver) deviceSetPath() string   { return filepath.Join(d.root, "deviceset.json") }
func (d *Driver) transactionPath() string { return filepath.Join(d.root, "transaction.json") }

func (d *Driver) loadDeviceSet() (deviceSet, error) {
	set := deviceSet{NextDeviceID: 1}
	if err := readJSON(d.deviceSetPath(), &set); err != nil && !errors.Is(err, os.ErrNotExist) {
		return set, err
	}
	return set, nil
}

// initBase makes the pool and the base device, formatted, unless they are
// made; a base device half made by a crash is deleted and made again. Call
// it holding the device set.
func (d *Driver) initBase() error {
	path := filepath.Join(d.root, "base.json")
	err := readJSON(path, &d.base)
	if err == nil && d.base.Initialized {
		return nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if _, serr := os.Stat(filepath.Join(d.pool.Dir, server.MetadataFile)); errors.Is(serr, os.ErrNotExist) {
		if err := server.CreatePool(d.pool.Dir, thinp.Options{
			BlockSize: d.opts.blockSize, DataSize: d.opts.dataSize, MetadataSize: d.opts.metadataSize,
		}); err != nil {
			return err
		}
	}
	c, cerr := d.client()
	if cerr != nil {
		return cerr
	}
	if err == nil { // half made
		c.Deactivate(d.base.DeviceID)
		if err := c.Delete(d.base.DeviceID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
	}
	set, err := d.loadDeviceSet()
	if err != nil {
		return err
	}
	d.base = deviceInfo{DeviceID: set.NextDeviceID, Size: d.opts.baseSize}
	if err := writeJSON(path, d.base, true); err != nil { // names the device before it exists
		return err
	}
	if err := c.CreateThin(d.base.DeviceID, d.base.Size); err != nil {
		return err
	}
	if err := d.format(c, d.base.DeviceID); err != nil {
		return fmt.Errorf("base device: %w", err)
	}
	set.NextDeviceID++
	if err := writeJSON(d.deviceSetPath(), set, false); err != nil {
		return err
	}
	d.base.Initialized = true
	return writeJSON(path, d.base, true)
}

// format makes the file system of the base device, with an empty rootfs
// directory as the root every layer starts from.
func (d *Driver) format(c *server.Client, id uint32) (err error) {
	dev, err := c.Activate(id)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Deactivate(id)) }()
	args := d.opts.mkfsCommand(dev, true)
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil && strings.Contains(string(out), prezeroedOption) { // an older mke2fs
		args = d.opts.mkfsCommand(dev, false)
		out, err = exec.Command(args[0], args[1:]...).CombinedOutput()
	}
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	dir := d.mountDir(".base")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(dev, dir, d.opts.fs, 0, d.opts.mountData()); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	err = os.Mkdir(filepath.Join(dir, "rootfs"), 0o755)
	if err == nil {
		err = os.Chmod(filepath.Join(dir, "rootfs"), 0o755) // whatever the umask
	}
	return errors.Join(err, unix.Unmount(dir, 0), os.Remove(dir))
}

func (d *Driver) Create(id, parent string, opts *driver.CreateOpts) error {
	return d.create(id, parent, opts)
}

// CreateReadWrite makes a container's layer: like any other, a snapshot.
func (d *Driver) CreateReadWrite(id, parent string, opts *driver.CreateOpts) error {
	return d.create(id, parent, opts)
}

// create snapshots the parent's device (or the base device) under an open
// transaction, and returns the layer durable, whatever the caller then
// syncs: the next create or delete overwrites the transaction record. The
// layer's record is written and flushed with the transaction record before
// the snapshot, whose commit, raising the pool's transaction id to the
// record's, is the moment the layer is made: a create costs one opening of
// the pool and one flush of the file system holding the root (one journal
// commit) besides the pool's own.
//
// When the parent is kept mounted by ApplyDiff, the child takes over its
// device, mount and page cache, and the parent the snapshot: the parent's
// record, replaced atomically after the transaction record is flushed,
// names the snapshot, and a crash before the commit restores it (rollBack).
func (d *Driver) create(id, parent string, opts *driver.CreateOpts) error {
	if err := driver.ValidID(id); err != nil {
		return err
	}
	if opts != nil {
		if err := driver.CheckOptions(name, opts.StorageOpt); err != nil {
			return fmt.Errorf("create layer %s: %w", id, err)
		}
	}
	var handedOver *kept
	err := d.withDeviceSet(func() error {
		if d.Exists(id) {
			return errdefs.ErrExists
		}
		if parent == "" {
			return d.snapshot(id, "", d.base, false)
		}
		p, err := d.load(parent)
		if err != nil {
			return fmt.Errorf("parent %s: %w", parent, errdefs.ErrNotFound)
		}
		k := d.take(parent)
		if k == nil {
			d.releaseKept("") // a load has gone on to another chain
			return d.snapshot(id, parent, p, false)
		}
		// No holder can appear while the device changes hands.
		err = d.mounts.IfUnused(parent, func() error { return d.snapshot(id, parent, p, true) })
		if errors.Is(err, errdefs.ErrInUse) { // someone mounted it over: not ours
			return d.snapshot(id, parent, p, false)
		}
		if err == nil {
			handedOver = k
		} else {
			d.drop(parent)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	if handedOver != nil {
		d.handOver(parent, id, handedOver.dev)
	}
	return nil
}

// snapshot makes layer id's device, a snapshot of origin, the device of
// parent ("" for the base); with handOver, id takes origin's device and
// parent the snapshot. Call it holding the device set.
func (d *Driver) snapshot(id, parent string, origin deviceInfo, handOver bool) error {
	set, err := d.loadDeviceSet()
	if err != nil {
		return err
	}
	tx := transaction{Op: "create", ID: id}
	if handOver {
		tx.Parent, tx.ParentDevice = parent, origin.DeviceID
	}
	for tx.DeviceID = set.NextDeviceID; ; tx.DeviceID = (tx.DeviceID + 1) % (thinp.MaxDeviceID + 1) {
		err := d.pool.PreparedSnap(tx.DeviceID, origin.DeviceID, func(st server.Status) error {
			if err := d.checkFreeSpace(st); err != nil {
				return err
			}
			tx.TransactionID = st.TransactionID + 1
			info := deviceInfo{DeviceID: tx.DeviceID, Size: origin.Size, TransactionID: tx.TransactionID, Initialized: true}
			if !handOver {
				return d.record(tx, parent, info)
			}
			info.DeviceID = origin.DeviceID
			if err := d.record(tx, parent, info); err != nil {
				return err
			}
			info.DeviceID = tx.DeviceID
			return writeJSON(filepath.Join(d.metaDir(parent), "device"), info, true)
		})
		if err == nil {
			break
		}
		if !errors.Is(err, errdefs.ErrExists) {
			if handOver {
				err = errors.Join(err, writeJSON(filepath.Join(d.metaDir(parent), "device"), origin, true))
			}
			return errors.Join(err, d.unrecord(id))
		}
	}
	set.NextDeviceID = (tx.DeviceID + 1) % (thinp.MaxDeviceID + 1)
	if err := writeJSON(d.deviceSetPath(), set, false); err != nil {
		return err
	}
	// A record left by a crash from here on names a complete create.
	return os.Remove(d.transactionPath())
}

// record writes the open transaction tx, the layer's record meta/<id> and
// the parent's marker of it, and flushes them all at once. Until the
// snapshot's commit the record names a device that may not exist: a crash
// before it leaves the transaction open, which removes the record.
func (d *Driver) record(tx transaction, parent string, info deviceInfo) error {
	dir := d.metaDir(tx.ID)
	os.RemoveAll(dir) // an orphan of a crash mid-Remove, or the last try's
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	paths := []string{d.transactionPath(), d.root, filepath.Join(dir, "device"), dir, filepath.Dir(dir)}
	if parent != "" {
		if err := driver.WriteParent(dir, parent); err != nil {
			return err
		}
		if err := d.lineage.Adopt(parent, tx.ID); err != nil {
			return err
		}
		paths = append(paths, filepath.Join(dir, "parent"), filepath.Join(d.metaDir(parent), "children"))
	}
	if err := writeJSONFile(filepath.Join(dir, "device"), info); err != nil {
		return err
	}
	if err := d.writeTransaction(tx); err != nil {
		return err
	}
	return fsyncTogether(paths...)
}

// unrecord removes the record of a create that failed, and then its
// transaction.
func (d *Driver) unrecord(id string) error {
	err := os.RemoveAll(d.metaDir(id))
	if err == nil {
		err = fsync(filepath.Join(d.root, "meta"))
	}
	if err != nil {
		return err
	}
	if err := os.Remove(d.transactionPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// writeTransaction writes the open transaction record in place, to be
// flushed by the caller before the pool changes: a crash in between leaves
// at worst a record that does not parse, which recover drops, since nothing
// was done under it. The record it replaces is its operation's own, which
// left everything durable.
func (d *Driver) writeTransaction(tx transaction) error {
	return writeJSONFile(d.transactionPath(), tx)
}

// checkFreeSpace refuses a new device when the pool's free data space is
// below dm.min_free_space.
func (d *Driver) checkFreeSpace(st server.Status) error {
	free, min := st.TotalData-st.UsedData, st.TotalData*uint64(d.opts.minFreePercent)/100
	if free < min {
		return fmt.Errorf("thin pool has %d free data blocks, less than the %d that dm.min_free_space=%d%% keeps: "+
			"grow it (strata thin --pool %s pool grow --data-size SIZE) or remove images", free, min, d.opts.minFreePercent, d.pool.Dir)
	}
	return nil
}

// Remove deletes the layer's device, which frees its blocks in the pool.
func (d *Driver) Remove(id string) error {
	d.releaseKept(id)
	c := d.pool
	err := d.withDeviceSet(func() error {
		info, err := d.load(id)
		if err != nil {
			return err
		}
		return d.mounts.IfUnused(id, func() error {
			if err := d.lineage.CheckRemovable(id); err != nil {
				return err
			}
			parent, err := d.lineage.Parent(id)
			if err != nil {
				return err
			}
			unmade, err := d.unmade(id)
			if err != nil {
				return err
			}
			if !unmade { // an unmade layer's device is not its own
				// Left active by a process that died between unmount and
				// deactivation; mounted, it stays and the delete is refused.
				c.Deactivate(info.DeviceID)
				err = c.PreparedDelete(info.DeviceID, func(st server.Status) error {
					tx := transaction{Op: "delete", ID: id, DeviceID: info.DeviceID, TransactionID: st.TransactionID + 1}
					if err := d.writeTransaction(tx); err != nil {
						return err
					}
					return fsyncTogether(d.transactionPath(), d.root)
				})
				if err != nil && !errors.Is(err, errdefs.ErrNotFound) { // deleted by hand: the layer goes
					return errors.Join(err, os.Remove(d.transactionPath()))
				}
			}
			if err := d.removeLeftovers(id); err != nil {
				return err
			}
			// Durable before the next record replaces this one.
			if err := fsync(filepath.Join(d.root, "meta")); err != nil {
				return err
			}
			if parent != "" {
				if err := d.lineage.Disown(parent, id); err != nil {
					return err
				}
			}
			return os.Remove(d.transactionPath())
		})
	})
	if err != nil {
		return fmt.Errorf("remove layer %s: %w", id, err)
	}
	return nil
}

// removeLeftovers removes what is left of a layer whose device is gone.
func (d *Driver) removeLeftovers(id string) error {
	os.Remove(d.mountDir(id))
	return os.RemoveAll(d.metaDir(id))
}

// Get activates the layer's device and mounts it (the first reference of
// any process does), and returns its root.
func (d *Driver) Get(id, mountLabel string) (string, error) {
	info, err := d.load(id)
	if err != nil {
		return "", err
	}
	if err := d.mounts.Acquire(id, d.mounter(id, info)); err != nil {
		return "", fmt.Errorf("get layer %s: %w", id, err)
	}
	return d.mountDir(id), nil
}

func (d *Driver) Put(id string) error {
	return d.mounts.Release(id, func() error { return d.unmount(id) })
}

// Pin mounts the layer as Get does, for a reference that outlives this
// process.
func (d *Driver) Pin(id, mountLabel string) (string, error) {
	info, err := d.load(id)
	if err != nil {
		return "", err
	}
	if err := d.mounts.Pin(id, d.mounter(id, info)); err != nil {
		return "", fmt.Errorf("pin layer %s: %w", id, err)
	}
	return d.mountDir(id), nil
}

func (d *Driver) Unpin(id string) error {
	return d.mounts.Unpin(id, func() error { return d.unmount(id) })
}

func (d *Driver) Mounted(id string) (int, error) {
	if !d.Exists(id) {
		return 0, fmt.Errorf("layer %s: %w", id, errdefs.ErrNotFound)
	}
	return d.mounts.Count(id)
}

// mounter returns the func that activates the layer's device and mounts
// its rootfs directory at mnt/<id>: the file system is mounted at a
// staging directory, its rootfs bound at mnt/<id>, and the staging mount
// dropped, so that the layer's root is a mount point of its own. A holder
// that died may have left it mounted: it is unmounted first, so that mounts
// never stack.
func (d *Driver) mounter(id string, info deviceInfo) func() error {
	return func() error {
		if unmade, err := d.unmade(id); err != nil || unmade {
			return errors.Join(err, fmt.Errorf("layer %s: its create did not complete: %w", id, errdefs.ErrNotFound))
		}
		if d.take(id) != nil { // kept mounted by this process
			return nil
		}
		dir, staging := d.mountDir(id), d.mountDir(".staging-"+id)
		if err := errors.Join(unmountDir(dir), unmountDir(staging)); err != nil {
			return err
		}
		c, err := d.client()
		if err != nil {
			return err
		}
		dev, err := c.Activate(info.DeviceID)
		if err != nil {
			return err
		}
		if err := d.mountRootfs(dev, staging, dir); err != nil {
			return errors.Join(err, c.Deactivate(info.DeviceID))
		}
		return nil
	}
}

func (d *Driver) mountRootfs(dev, staging, dir string) error {
	for _, p := range []string{staging, dir} {
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	if err := unix.Mount(dev, staging, d.opts.fs, 0, d.opts.mountData()); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	err := unix.Mount(filepath.Join(staging, "rootfs"), dir, "", unix.MS_BIND, "")
	if err != nil {
		err = fmt.Errorf("mount %s: %w", dir, err)
	}
	// Detached, not unmounted: a freeze for a snapshot may hold it a moment.
	return errors.Join(err, unix.Unmount(staging, unix.MNT_DETACH), os.Remove(staging))
}

// unmount unmounts layer id and deactivates its device.
func (d *Driver) unmount(id string) error {
	info, err := d.load(id)
	if err != nil {
		return err
	}
	if err := unmountDir(d.mountDir(id)); err != nil {
		return err
	}
	if err := d.pool.Deactivate(info.DeviceID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	return nil
}

// unmountDir detaches whatever is mounted at dir, as Docker's driver did: a
// freeze for a snapshot may hold the mount a moment, and the device is
// deactivated only once nothing holds it.
func unmountDir(dir string) error {
	for {
		err := unix.Unmount(dir, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
}

// recover runs when no other process uses the root: it finishes or rolls
// back the open transaction, unmounts what no live holder accounts for and
// deactivates the devices they leave active.
func (d *Driver) recover(m *driver.Mounts) error {
	d.mounts = m
	b, err := os.ReadFile(d.transactionPath())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var tx transaction
	if err == nil && json.Unmarshal(b, &tx) != nil {
		// Torn by a crash before it was flushed, so before any change.
		if err := os.Remove(d.transactionPath()); err != nil {
			return err
		}
	} else if err == nil {
		if err := d.rollBack(tx); err != nil {
			return fmt.Errorf("roll back the open transaction (%s of device %d): %w", tx.Op, tx.DeviceID, err)
		}
	}
	held := map[uint32]bool{}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Join(d.root, "mnt")))
	if err != nil {
		return err
	}
	var errs []error
	for _, mnt := range mounts {
		id := filepath.Base(mnt.Mountpoint)
		if info, err := d.load(id); err == nil {
			if n, err := m.Count(id); err == nil && n > 0 {
				held[info.DeviceID] = true
				continue
			}
		}
		errs = append(errs, unmountDir(mnt.Mountpoint))
	}
	if !d.pool.Running() {
		return errors.Join(errs...)
	}
	st, err := d.pool.Usage()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for dev := range st.Active {
		if !held[dev] {
			if err := d.pool.Deactivate(dev); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// rollBack finishes a delete, and undoes a create whose snapshot was not
// committed.
func (d *Driver) rollBack(tx transaction) error {
	if tx.Op == "create" && tx.Parent != "" {
		if err := d.settleHandOver(tx); err != nil {
			return err
		}
	}
	if tx.Op == "create" && d.Exists(tx.ID) {
		unmade, err := d.unmade(tx.ID)
		if err != nil {
			return err
		}
		if !unmade { // complete
			return os.Remove(d.transactionPath())
		}
	} else if tx.Op == "delete" || !d.deviceInUse(tx.DeviceID) {
		// A delete, or a create whose record was not flushed: it made no
		// device, or a device that is not another layer's.
		d.pool.Deactivate(tx.DeviceID)
		if err := d.pool.Delete(tx.DeviceID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
	}
	// The record goes for good before the transaction that explains it.
	if err := d.removeLeftovers(tx.ID); err != nil {
		return err
	}
	if err := fsync(filepath.Join(d.root, "meta")); err != nil {
		return err
	}
	return os.Remove(d.transactionPath())
}

// settleHandOver gives the parent of a create that took over its device
// the snapshot if the create was made, its own device back if not.
func (d *Driver) settleHandOver(tx transaction) error {
	made := false
	if d.Exists(tx.ID) {
		unmade, err := d.unmade(tx.ID)
		if err != nil {
			return err
		}
		made = !unmade
	}
	info, err := d.load(tx.Parent)
	if err != nil {
		return err
	}
	info.DeviceID = tx.ParentDevice
	if made {
		info.DeviceID = tx.DeviceID
	}
	return writeJSON(filepath.Join(d.metaDir(tx.Parent), "device"), info, true)
}

// unmade tells whether layer id is recorded by a create whose snapshot was
// not committed, or failed because its device id was another layer's: the
// open transaction names it, with a transaction id the pool has not reached.
func (d *Driver) unmade(id string) (bool, error) {
	var tx transaction
	if readJSON(d.transactionPath(), &tx) != nil || tx.Op != "create" || tx.ID != id {
		return false, nil // none, or torn before anything was done under it
	}
	st, err := d.pool.Usage()
	if err != nil {
		return false, err
	}
	return st.TransactionID < tx.TransactionID, nil
}

// deviceInUse tells whether a layer, or the base, has device dev.
func (d *Driver) deviceInUse(dev uint32) bool {
	var base deviceInfo
	if readJSON(filepath.Join(d.root, "base.json"), &base) == nil && base.DeviceID == dev {
		return true
	}
	entries, _ := os.ReadDir(filepath.Join(d.root, "meta"))
	for _, e := range entries {
		if info, err := d.load(e.Name()); err == nil && info.DeviceID == dev {
			return true
		}
	}
	return false
}
