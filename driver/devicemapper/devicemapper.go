// Package devicemapper is the seed's devicemapper driver on strata's own
// thin pool (package thinp, served as block devices by thinp/server): every
// layer is a thin device holding a real file system, a snapshot of its
// parent's device, or of the base device for a layer without a parent.
// Creating a layer costs one snapshot whatever its size; Get activates the
// device and mounts it, Put unmounts and deactivates it, Remove deletes the
// device, which frees its blocks in the pool. Diffs compare a layer's tree
// with its parent's (driver.NaiveDiff).
//
// On disk, under the driver root:
//
//	pool/               the thin pool: data, metadata and the server's files
//	                    (thinp/server); activate devices by hand there with
//	                    strata thin --pool <root>/devicemapper/pool
//	base.json           the base device: device id, size, initialized
//	deviceset.json      the next device id and the pool's transaction id
//	transaction.json    the open transaction: a device being created or
//	                    deleted, flushed before the pool changes (one cut
//	                    short by a crash is dropped: nothing was done under
//	                    it); the next start that is alone finishes or rolls
//	                    it back, as Docker's driver did; a create that took
//	                    over its parent's mounted device (keep.go) also
//	                    names the parent and the device to give it back
//	meta/<id>/device    the layer's device (JSON, as Docker's metadata/<hash>:
//	                    device_id, size, transaction_id, initialized)
//	meta/<id>/parent, meta/<id>/children/<c>   driver.Lineage
//	mnt/<id>            the layer's root: the rootfs directory of its file
//	                    system, bound there (the file system's own root holds
//	                    lost+found); mnt/.staging-<id> while it is mounted
//	.deviceset.lock     flocked while a device is created or deleted
//	.lock .procs/ .mounts/   driver.Mounts
//
// A layer exists while meta/<id>/device does: it is written, under the open
// transaction, before the device is made, and removed after it is deleted.
// Until the snapshot's commit, or after a crash before it until a start that
// is alone rolls the transaction back, it names a device that is not its
// own (none, or another layer's whose id was found taken): Get fails, and
// Remove drops the layer without touching the device.
package devicemapper

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/thinp/server"
)

const name = "devicemapper"

func init() {
	driver.Register(name, New)
}

// Driver is the devicemapper graph driver.
type Driver struct {
	// The naive diff, built over this Driver: it supplies the diff
	// methods; the methods below shadow the rest.
	driver.Driver

	root    string
	opts    options
	pool    *server.Client
	lineage driver.Lineage
	mounts  *driver.Mounts
	held    *driver.Root // d.mounts is held.Mounts
	base    deviceInfo

	mu   sync.Mutex // guards hold and kept
	hold io.Closer  // keeps the pool's server up while this driver uses it
	kept *kept      // the layer ApplyDiff left mounted for its child
}

// deviceInfo is a layer's device, in the fields of Docker's metadata files.
type deviceInfo struct {
	DeviceID      uint32 `json:"device_id"`
	Size          int64  `json:"size"`
	TransactionID uint64 `json:"transaction_id"`
	Initialized   bool   `json:"initialized"`
}

// New starts the driver with its state in root, making the pool and the
// base device the first time. It fails with errdefs.ErrNotSupported where
// FUSE, loop devices or the file system's mkfs are missing.
func New(root string, options map[string]string) (driver.Driver, error) {
	opts, err := parseOptions(options)
	if err != nil {
		return nil, err
	}
	if err := checkSupport(opts.fs); err != nil {
		return nil, err
	}
	for _, sub := range []string{"meta", "mnt"} {
		if err := os.MkdirAll(filepath.Join(root, sub), 0o700); err != nil {
			return nil, err
		}
	}
	d := &Driver{root: root, opts: opts, pool: &server.Client{Dir: filepath.Join(root, "pool")}}
	d.lineage = driver.Lineage{Dir: d.metaDir, Exists: d.Exists}
	d.Driver = driver.NaiveDiff(d)
	held, err := driver.OpenRoot(root, d.recover)
	if err != nil {
		return nil, err
	}
	d.held, d.mounts = held, held.Mounts
	if err := d.withDeviceSet(func() error { return d.initBase() }); err != nil {
		d.Cleanup()
		return nil, fmt.Errorf("storage driver %s: %w", name, err)
	}
	return d, nil
}

// checkSupport fails with errdefs.ErrNotSupported when devices cannot be
// served or formatted here.
func checkSupport(fs string) error {
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			return fmt.Errorf("storage driver %s not supported here: %s: %w", name, dev, errdefs.ErrNotSupported)
		}
	}
	_, err := exec.LookPath("mkfs." + fs)
	if err != nil {
		return fmt.Errorf("storage driver %s not supported here: mkfs.%s is missing: %w", name, fs, errdefs.ErrNotSupported)
	}
	return nil
}

func (d *Driver) metaDir(id string) string  { return filepath.Join(d.root, "meta", id) }
func (d *Driver) mountDir(id string) string { return filepath.Join(d.root, "mnt", id) }

func (d *Driver) String() string { return name }

// client returns the pool's client, holding its server up from the first
// activation until Cleanup. Requests that need no device go to d.pool
// directly: without a server, the client does them in this process, which
// is what makes a create cheap.
func (d *Driver) client() (*server.Client, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hold == nil {
		hold, err := d.pool.Hold()
		if err != nil {
			return nil, err
		}
		d.hold = hold
	}
	return d.pool, nil
}

// withDeviceSet runs fn holding the device set's lock, which every process
// takes to create or delete devices.
func (d *Driver) withDeviceSet(fn func() error) error {
	f, err := os.OpenFile(filepath.Join(d.root, ".deviceset.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	return fn()
}

// readJSON reads a JSON file; a missing file is ErrNotExist.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// writeJSON replaces a JSON file atomically, and durably when sync is set.
func writeJSON(path string, v any, sync bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	os.Remove(tmp)
	if sync {
		err = driver.SyncWriteFile(tmp, b)
	} else {
		err = os.WriteFile(tmp, b, 0o600)
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if sync {
		return fsync(filepath.Dir(path))
	}
	return nil
}

// writeJSONFile writes a file in place, for the caller to flush.
func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// fsyncTogether flushes files and directories with concurrent fsyncs: a
// journaling file system commits them in one transaction, where fsyncs one
// after another would wait for a commit apiece.
func fsyncTogether(paths ...string) error {
	errs := make(chan error, len(paths))
	for _, p := range paths {
		go func() { errs <- fsync(p) }()
	}
	var err error
	for range paths {
		err = errors.Join(err, <-errs)
	}
	return err
}

func fsync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// load returns the device of layer id.
func (d *Driver) load(id string) (deviceInfo, error) {
	var info deviceInfo
	if driver.ValidID(id) != nil {
		return info, fmt.Errorf("layer %s: %w", id, errdefs.ErrNotFound)
	}
	err := readJSON(filepath.Join(d.metaDir(id), "device"), &info)
	if errors.Is(err, os.ErrNotExist) {
		return info, fmt.Errorf("layer %s: %w", id, errdefs.ErrNotFound)
	}
	if err != nil {
		return info, fmt.Errorf("layer %s: %w", id, err)
	}
	return info, nil
}

func (d *Driver) Exists(id string) bool {
	if driver.ValidID(id) != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(d.metaDir(id), "device"))
	return err == nil
}

// Status is what docker info showed for devicemapper.
func (d *Driver) Status() [][2]string {
	st := [][2]string{
		{"Pool Name", poolName(d.root)},
		{"Pool Blocksize", humanBytes(d.opts.blockSize)},
		{"Base Device Size", humanBytes(d.base.Size)},
		{"Backing Filesystem", d.opts.fs},
		{"Data file", filepath.Join(d.pool.Dir, server.DataFile)},
		{"Metadata file", filepath.Join(d.pool.Dir, server.MetadataFile)},
	}
	ps, err := d.pool.Status()
	if err != nil {
		return append(st, [2]string{"Pool Status", errdefs.Message(err)})
	}
	bs, ms := uint64(ps.BlockSize), uint64(4096)
	st[1][1] = humanBytes(ps.BlockSize)
	return append(st,
		[2]string{"Data Space Used", humanBytes(int64(ps.UsedData * bs))},
		[2]string{"Data Space Total", humanBytes(int64(ps.TotalData * bs))},
		[2]string{"Data Space Available", humanBytes(int64((ps.TotalData - ps.UsedData) * bs))},
		[2]string{"Metadata Space Used", humanBytes(int64(ps.UsedMeta * ms))},
		[2]string{"Metadata Space Total", humanBytes(int64(ps.TotalMeta * ms))},
		[2]string{"Metadata Space Available", humanBytes(int64((ps.TotalMeta - ps.UsedMeta) * ms))},
		[2]string{"Thin Pool Minimum Free Space", humanBytes(int64(ps.TotalData*bs) * int64(d.opts.minFreePercent) / 100)},
		[2]string{"Metadata Format", "dm-thin (kernel compatible; thin_check passes)"},
		[2]string{"Transaction ID", fmt.Sprint(ps.TransactionID)},
		[2]string{"Devices", fmt.Sprintf("%d, %d active", len(ps.Devices), len(ps.Active))},
	)
}

// poolName is Docker's: the root's device numbers and inode.
func poolName(root string) string {
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return "strata-pool"
	}
	return fmt.Sprintf("strata-%d:%d-%d-pool", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
}

// humanBytes prints binary sizes as Docker's devicemapper status did.
func humanBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.3g", f), ".0"), ".00") + " " + units[i]
}

func (d *Driver) Metadata(id string) (map[string]string, error) {
	info, err := d.load(id)
	if err != nil {
		return nil, err
	}
	return map[string]string{
		"DeviceId":   fmt.Sprint(info.DeviceID),
		"DeviceSize": fmt.Sprint(info.Size),
		"DeviceName": poolName(d.root) + "-" + id,
		"MergedDir":  d.mountDir(id),
	}, nil
}

// Capabilities: a child is a snapshot of its parent, so the parent must be
// complete first (a load creates each layer on the mount of its parent:
// keep.go); a read-write layer is durable once created, at the cost of a
// few flushes (create).
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{ParallelApply: false, DurableReadWrite: true}
}

// Cleanup releases this process's references, unmounting and deactivating
// what nobody else holds, and the pool's server; pins stay. When no other
// process uses the root, it waits for the server to exit, unless a pinned
// device keeps it.
func (d *Driver) Cleanup() error {
	d.releaseKept("")
	err := d.held.Close(d.unmount)
	d.mu.Lock()
	if d.hold != nil {
		d.hold.Close()
		d.hold = nil
	}
	d.mu.Unlock()
	lock, alone, lerr := driver.LockRoot(d.root)
	if lerr != nil {
		return errors.Join(err, lerr)
	}
	defer lock.Close()
	if alone {
		if serr := d.pool.Stop(); serr != nil && !errors.Is(serr, errdefs.ErrInUse) {
			err = errors.Join(err, serr)
		}
	}
	return err
}
