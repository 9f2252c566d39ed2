package devicemapper

import (
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
	args := d.opts.mkfsCommand(dev)
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
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
// transaction, then records the layer.
func (d *Driver) create(id, parent string, opts *driver.CreateOpts) error {
	if err := driver.ValidID(id); err != nil {
		return err
	}
	if opts != nil {
		if err := driver.CheckOptions(name, opts.StorageOpt); err != nil {
			return fmt.Errorf("create layer %s: %w", id, err)
		}
	}
	c := d.pool
	err := d.withDeviceSet(func() error {
		if d.Exists(id) {
			return errdefs.ErrExists
		}
		origin := d.base
		if parent != "" {
			p, err := d.load(parent)
			if err != nil {
				return fmt.Errorf("parent %s: %w", parent, errdefs.ErrNotFound)
			}
			origin = p
		}
		oldTx, err := d.checkFreeSpace(c)
		if err != nil {
			return err
		}
		set, err := d.loadDeviceSet()
		if err != nil {
			return err
		}
		tx := transaction{Op: "create", ID: id, TransactionID: oldTx + 1}
		for tx.DeviceID = set.NextDeviceID; ; tx.DeviceID = (tx.DeviceID + 1) % (thinp.MaxDeviceID + 1) {
			if err := writeJSON(d.transactionPath(), tx, true); err != nil {
				return err
			}
			err := c.CreateSnapTx(tx.DeviceID, origin.DeviceID, oldTx, tx.TransactionID)
			if err == nil {
				break
			}
			if !errors.Is(err, errdefs.ErrExists) {
				return errors.Join(err, os.Remove(d.transactionPath()))
			}
		}
		if err := d.record(id, parent, deviceInfo{DeviceID: tx.DeviceID, Size: origin.Size, TransactionID: tx.TransactionID, Initialized: true}); err != nil {
			return err
		}
		set.NextDeviceID = (tx.DeviceID + 1) % (thinp.MaxDeviceID + 1)
		if err := writeJSON(d.deviceSetPath(), set, false); err != nil {
			return err
		}
		return os.Remove(d.transactionPath())
	})
	if err != nil {
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	return nil
}

// record writes meta/<id>: the layer exists from its rename on. It is
// made durable by the caller's SyncFS (driver.ProtoDriver.Create); a crash
// before that leaves the open transaction, which deletes the device.
func (d *Driver) record(id, parent string, info deviceInfo) error {
	if parent != "" {
		if err := d.lineage.Adopt(parent, id); err != nil {
			return err
		}
	}
	tmp := d.metaDir(".tmp-" + id)
	os.RemoveAll(tmp)
	os.RemoveAll(d.metaDir(id)) // an orphan of a crash mid-Remove
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	if err := driver.WriteParent(tmp, parent); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(tmp, "device"), info, false); err != nil {
		return err
	}
	return os.Rename(tmp, d.metaDir(id))
}

// checkFreeSpace refuses a new device when the pool's free data space is
// below dm.min_free_space, and returns the pool's transaction id.
func (d *Driver) checkFreeSpace(c *server.Client) (uint64, error) {
	st, err := c.Usage()
	if err != nil {
		return 0, err
	}
	free, min := st.TotalData-st.UsedData, st.TotalData*uint64(d.opts.minFreePercent)/100
	if free < min {
		return 0, fmt.Errorf("thin pool has %d free data blocks, less than the %d that dm.min_free_space=%d%% keeps: "+
			"grow it (strata thin --pool %s pool grow --data-size SIZE) or remove images", free, min, d.opts.minFreePercent, d.pool.Dir)
	}
	return st.TransactionID, nil
}

// Remove deletes the layer's device, which frees its blocks in the pool.
func (d *Driver) Remove(id string) error {
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
			st, err := c.Usage()
			if err != nil {
				return err
			}
			// Left active by a process that died between unmount and
			// deactivation; mounted, it stays and the delete is refused.
			c.Deactivate(info.DeviceID)
			tx := transaction{Op: "delete", ID: id, DeviceID: info.DeviceID, TransactionID: st.TransactionID + 1}
			if err := writeJSON(d.transactionPath(), tx, true); err != nil {
				return err
			}
			err = c.DeleteTx(info.DeviceID, st.TransactionID, tx.TransactionID)
			if err != nil && !errors.Is(err, errdefs.ErrNotFound) { // deleted by hand: the layer goes
				return errors.Join(err, os.Remove(d.transactionPath()))
			}
			if err := d.removeLeftovers(id); err != nil {
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
	var tx transaction
	err := readJSON(d.transactionPath(), &tx)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err == nil {
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

// rollBack finishes a delete, and undoes a create that did not record its
// layer.
func (d *Driver) rollBack(tx transaction) error {
	switch {
	case tx.Op == "create" && d.Exists(tx.ID): // complete
	case tx.Op == "create" && d.deviceInUse(tx.DeviceID):
		// The crash came before the snapshot, which would have failed: the
		// id was another layer's.
	default:
		os.RemoveAll(d.metaDir(".tmp-" + tx.ID))
		d.pool.Deactivate(tx.DeviceID)
		if err := d.pool.Delete(tx.DeviceID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
		if err := d.removeLeftovers(tx.ID); err != nil {
			return err
		}
	}
	return os.Remove(d.transactionPath())
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
