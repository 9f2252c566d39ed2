package devicemapper

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/driver/drivertest"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/thinp"
	"github.com/strata-storage/strata/thinp/server"
)

// testOptions make a small pool and base device: the cases need little
// space, and a smaller base formats faster.
var testOptions = map[string]string{"dm.loopdatasize": "8G", "dm.basesize": "1G"}

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T, root string) driver.Driver {
		d, err := driver.New(root, name, testOptions)
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

func open(t *testing.T, root string) *Driver {
	t.Helper()
	d, err := driver.New(root, name, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Cleanup() })
	return d.(*Driver)
}

// restart closes d and opens root again, whose start must settle the open
// transaction the test left.
func restart(t *testing.T, d *Driver, root string) *Driver {
	t.Helper()
	if err := d.Cleanup(); err != nil {
		t.Fatal(err)
	}
	d = open(t, root)
	if _, err := os.Stat(d.transactionPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("transaction record after recovery: %v", err)
	}
	return d
}

func poolStatus(t *testing.T, d *Driver) server.Status {
	t.Helper()
	st, err := d.pool.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestSpaceComesBack writes in many containers' layers and removes them:
// the pool's used data blocks come back to where they were (moby #3182),
// and thin_check passes.
func TestSpaceComesBack(t *testing.T) {
	d := open(t, t.TempDir())
	if err := d.Create("image", "", nil); err != nil {
		t.Fatal(err)
	}
	dir, err := d.Get("image", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), bytes.Repeat([]byte("image"), 200000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Put("image"); err != nil {
		t.Fatal(err)
	}
	before := poolStatus(t, d).UsedData

	const n = 20
	for i := range n {
		id := fmt.Sprint("c", i)
		if err := d.CreateReadWrite(id, "image", nil); err != nil {
			t.Fatal(err)
		}
		dir, err := d.Get(id, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "g"), bytes.Repeat([]byte{byte(i)}, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || len(got) != 1000000 {
			t.Fatalf("container %d reads the image's file: %d bytes, %v", i, len(got), err)
		}
		if err := d.Put(id); err != nil {
			t.Fatal(err)
		}
	}
	if during := poolStatus(t, d).UsedData; during < before+n*(1<<20)/uint64(thinp.DefaultBlockSize) {
		t.Fatalf("used data blocks: %d before the containers, %d with them", before, during)
	}
	for i := range n {
		if err := d.Remove(fmt.Sprint("c", i)); err != nil {
			t.Fatal(err)
		}
	}
	if after := poolStatus(t, d).UsedData; after != before {
		t.Fatalf("used data blocks: %d before the containers, %d after removing them", before, after)
	}
	if out, err := d.pool.Check(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestOpenTransactionRolledBack crashes creates at each step: a record
// written before its snapshot, a snapshot committed without its record (as
// the records of older versions came after the snapshot), and a snapshot
// committed after its record. The next start removes what the first two
// left, and keeps the third.
func TestOpenTransactionRolledBack(t *testing.T) {
	root := t.TempDir()
	d := open(t, root)
	if err := d.Create("a", "", nil); err != nil {
		t.Fatal(err)
	}
	a, err := d.load("a")
	if err != nil {
		t.Fatal(err)
	}
	// crash makes device dev, a snapshot of a, for layer id: recorded
	// first when record, committed (raising the transaction id) when snap.
	crash := func(id string, dev uint32, record, snap bool) {
		t.Helper()
		tx := transaction{Op: "create", ID: id, DeviceID: dev, TransactionID: poolStatus(t, d).TransactionID + 1}
		if record {
			if err := d.record(tx, "a", deviceInfo{DeviceID: dev, Size: a.Size, TransactionID: tx.TransactionID}); err != nil {
				t.Fatal(err)
			}
		} else if err := d.writeTransaction(tx); err != nil {
			t.Fatal(err)
		}
		if snap {
			if err := d.pool.CreateSnapTx(dev, a.DeviceID, tx.TransactionID-1, tx.TransactionID); err != nil {
				t.Fatal(err)
			}
		}
		d = restart(t, d, root)
	}
	inPool := func(dev uint32) bool {
		for _, dv := range poolStatus(t, d).Devices {
			if dv.ID == dev {
				return true
			}
		}
		return false
	}

	crash("b", 100, true, false)
	if d.Exists("b") || inPool(100) {
		t.Fatal("layer b, recorded but never snapshotted, is there after recovery")
	}
	crash("b", 101, false, true)
	if d.Exists("b") || inPool(101) {
		t.Fatal("device 101, snapshotted but never recorded, is there after recovery")
	}
	crash("c", 102, true, true)
	if !d.Exists("c") || !inPool(102) {
		t.Fatal("layer c, recorded and snapshotted, is gone after recovery")
	}

	// Before a recovery (another process crashed, this one runs on): a
	// record naming c's device, whose snapshot failed, is neither mounted
	// nor deleted with c's device.
	tx := transaction{Op: "create", ID: "d", DeviceID: 102, TransactionID: poolStatus(t, d).TransactionID + 1}
	if err := d.record(tx, "a", deviceInfo{DeviceID: 102, Size: a.Size, TransactionID: tx.TransactionID}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Get("d", ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get of an unmade layer: %v, want ErrNotFound", err)
	}
	if err := d.Remove("d"); err != nil {
		t.Fatal(err)
	}
	if d.Exists("d") || !inPool(102) {
		t.Fatal("the remove of unmade layer d took layer c's device, or left d")
	}
	if err := d.Create("b", "a", nil); err != nil {
		t.Fatalf("create after recovery: %v", err)
	}
	for _, id := range []string{"b", "c"} {
		if err := d.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Remove("a"); err != nil {
		t.Fatalf("remove of a parent whose children are gone: %v", err)
	}
	if out, err := d.pool.Check(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestTornTransactionDropped: a record cut short by a crash before its
// flush, so before any change to the pool, is dropped at the next start.
func TestTornTransactionDropped(t *testing.T) {
	root := t.TempDir()
	d := open(t, root)
	if err := d.Create("a", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.transactionPath(), []byte(`{"op":"create","dev`), 0o600); err != nil {
		t.Fatal(err)
	}
	d = restart(t, d, root)
	if !d.Exists("a") {
		t.Fatal("layer a lost")
	}
	if err := d.CreateReadWrite("b", "a", nil); err != nil {
		t.Fatalf("create after recovery: %v", err)
	}
}

// TestMinFreeSpace refuses a new device once the pool is fuller than
// dm.min_free_space allows.
func TestMinFreeSpace(t *testing.T) {
	d, err := driver.New(t.TempDir(), name, map[string]string{
		"dm.loopdatasize": "256M", "dm.basesize": "1G", "dm.min_free_space": "50%"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Cleanup() })
	if err := d.Create("a", "", nil); err != nil {
		t.Fatal(err)
	}
	dir, err := d.Get("a", "")
	if err != nil {
		t.Fatal(err)
	}
	// Past half of the pool (the base file system already uses some).
	if err := os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte{1}, 128<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Put("a"); err != nil {
		t.Fatal(err)
	}
	err = d.Create("b", "a", nil)
	if err == nil || !strings.Contains(err.Error(), "dm.min_free_space") {
		t.Fatalf("create in a pool past dm.min_free_space: %v", err)
	}
	root := d.(*Driver).root
	for _, p := range []string{"transaction.json", "meta/b"} {
		if _, err := os.Stat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after a refused create: %v", p, err)
		}
	}
}

// BenchmarkCreateReadWrite is a container's layer: a snapshot of its
// image's device, recorded under a transaction.
func BenchmarkCreateReadWrite(b *testing.B) {
	d, err := driver.New(b.TempDir(), name, testOptions)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Cleanup()
	if err := d.Create("image", "", nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := d.CreateReadWrite(fmt.Sprint("c", i), "image", nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestGrowWhileMounted fills a small pool under a mounted layer, grows it
// (what strata thin pool grow does) and writes again, nothing remounted:
// the weakness the seed names.
func TestGrowWhileMounted(t *testing.T) {
	// Every block of ext4's own metadata is written at mkfs (no
	// uninitialised groups), so that only file data meets the full pool:
	// a failed metadata write stops ext4's journal, as on a kernel pool.
	dd, err := driver.New(t.TempDir(), name, map[string]string{
		"dm.loopdatasize": "160M", "dm.basesize": "1G", "dm.min_free_space": "0%",
		"dm.mkfsarg": "-O ^metadata_csum,^uninit_bg"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dd.Cleanup() })
	d := dd.(*Driver)
	if err := d.Create("a", "", nil); err != nil {
		t.Fatal(err)
	}
	dir, err := d.Get("a", "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("a")
	write := func(name string) error {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|unix.O_DIRECT, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		buf := make([]byte, 1<<20) // page-aligned: a large allocation
		for range 200 {
			if _, err := f.Write(buf); err != nil {
				return err
			}
		}
		return f.Sync()
	}
	if err := write("fill"); err == nil {
		t.Fatal("200 MiB fit in a 160 MiB pool")
	}
	if !poolStatus(t, d).OutOfData {
		t.Fatal("pool status does not say it ran out of data space")
	}
	if err := d.pool.Grow(1<<30, 0); err != nil {
		t.Fatal(err)
	}
	if err := write("after-grow"); err != nil {
		t.Fatalf("write after growing the pool: %v", err)
	}
}

// TestXFS formats the base device with xfs (dm.fs): snapshots share the
// file system's UUID, which xfs mounts only with nouuid.
func TestXFS(t *testing.T) {
	d, err := driver.New(t.TempDir(), name, map[string]string{
		"dm.loopdatasize": "2G", "dm.basesize": "1G", "dm.fs": "xfs"})
	if errors.Is(err, errdefs.ErrNotSupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Cleanup() })
	for _, l := range [][2]string{{"a", ""}, {"b", "a"}, {"c", "a"}} {
		if err := d.Create(l[0], l[1], nil); err != nil {
			t.Fatal(err)
		}
	}
	a, err := d.Get("a", "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("a")
	b, err := d.Get("b", "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("b")
	if err := os.WriteFile(filepath.Join(b, "f"), []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(a, "f")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a write in b shows in its parent a: %v", err)
	}
	if fs := driver.BackingFS(b); fs != "xfs" {
		t.Fatalf("layer b is on %s", fs)
	}
	if st := d.Status(); !slices.Contains(st, [2]string{"Backing Filesystem", "xfs"}) {
		t.Fatalf("status: %v", st)
	}
}
