package server

import (
	"bytes"
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/thinp"
)

// fixture is a pool in a temporary directory whose server, devices and
// mounts are all gone when the test ends, failed or not.
type fixture struct {
	t   *testing.T
	dir string
	c   *Client
}

func newFixture(t *testing.T, opts thinp.Options) *fixture {
	t.Helper()
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("no %s: %v", dev, err)
		}
	}
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "thin_check", "thin_dump"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	dir := filepath.Join(t.TempDir(), "pool")
	if err := CreatePool(dir, opts); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, dir: dir, c: &Client{Dir: dir}}
	t.Cleanup(f.stop)
	return f
}

// stop ends the server (mounts were undone by their own cleanups, which
// run first); a killed server's FUSE mount is left for it to undo.
func (f *fixture) stop() {
	if err := f.c.Stop(); err != nil {
		f.t.Errorf("stop: %v", err)
	}
	unix.Unmount(filepath.Join(f.dir, devDir), unix.MNT_DETACH)
}

func (f *fixture) run(name string, args ...string) string {
	f.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		f.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// activate activates id and makes a file system on it when mkfs is set.
func (f *fixture) activate(id uint32, mkfs bool) string {
	f.t.Helper()
	dev, err := f.c.Activate(id)
	if err != nil {
		f.t.Fatal(err)
	}
	if mkfs {
		f.run("mkfs.ext4", "-q", "-E", "discard,lazy_itable_init=0,lazy_journal_init=0", dev)
	}
	return dev
}

// mount mounts dev on a new directory until unmount or the test's end.
func (f *fixture) mount(dev string) string {
	f.t.Helper()
	dir, err := os.MkdirTemp(f.t.TempDir(), "mnt")
	if err != nil {
		f.t.Fatal(err)
	}
	if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
		f.t.Fatalf("mount %s: %v", dev, err)
	}
	f.t.Cleanup(func() { unmount(dir) })
	return dir
}

// unmount unmounts dir if it is mounted (it may have been already).
func unmount(dir string) {
	if err := unix.Unmount(dir, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		unix.Unmount(dir, unix.MNT_DETACH)
	}
}

// check runs thin_check on the committed metadata and compares thin_dump's
// devices with the pool's own.
func (f *fixture) check() {
	f.t.Helper()
	if out, err := f.c.Check(); err != nil {
		f.t.Fatalf("%v\n%s", err, out)
	}
	st, err := f.c.Status()
	if err != nil {
		f.t.Fatal(err)
	}
	// Status started a server if none ran; it has exited again unless a
	// device is active, and then the copy is what it committed.
	meta := filepath.Join(f.dir, MetadataFile)
	if len(st.Active) > 0 {
		rep, err := f.c.call(&request{Op: opCheckCopy})
		if err != nil {
			f.t.Fatal(err)
		}
		defer os.Remove(rep.Path)
		meta = rep.Path
	} else {
		f.waitStopped()
	}
	got := dumpDevices(f.t, meta)
	want := map[uint32]uint64{}
	for _, d := range st.Devices {
		want[d.ID] = d.MappedBlocks
	}
	if len(got) != len(want) {
		f.t.Fatalf("thin_dump devices %v, pool has %v", got, want)
	}
	for id, n := range want {
		if m, ok := got[id]; !ok || m != n {
			f.t.Fatalf("thin_dump devices %v, pool has %v", got, want)
		}
	}
}

// waitStopped waits until no server holds the pool.
func (f *fixture) waitStopped() {
	lock, err := os.Open(filepath.Join(f.dir, lockFile))
	if err != nil {
		f.t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		f.t.Fatal(err)
	}
}

// dumpDevices returns the devices thin_dump finds and their mapped blocks.
func dumpDevices(t *testing.T, meta string) map[uint32]uint64 {
	t.Helper()
	out, err := exec.Command("thin_dump", meta).Output()
	if err != nil {
		t.Fatalf("thin_dump: %v", err)
	}
	var sb struct {
		Devices []struct {
			ID     uint32 `xml:"dev_id,attr"`
			Mapped uint64 `xml:"mapped_blocks,attr"`
		} `xml:"device"`
	}
	if err := xml.Unmarshal(out, &sb); err != nil {
		t.Fatalf("thin_dump output: %v", err)
	}
	devs := map[uint32]uint64{}
	for _, d := range sb.Devices {
		devs[d.ID] = d.Mapped
	}
	return devs
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestWalkthrough is the seed's dmsetup session: a pool with the seed's
// sizes, thin device 0 with ext4, snapshot 1 of mounted 0, a file written
// in 1, snapshot 2 of mounted 1 showing the file; all mounted at once.
func TestWalkthrough(t *testing.T) {
	f := newFixture(t, thinp.Options{})
	f.check()
	if err := f.c.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	f.check()
	dev0 := f.activate(0, true)
	m0 := f.mount(dev0)
	writeFile(t, filepath.Join(m0, "file"), []byte("this is thin"))
	f.check()

	if err := f.c.CreateSnap(1, 0); err != nil {
		t.Fatal(err)
	}
	f.check()
	m1 := f.mount(f.activate(1, false))
	writeFile(t, filepath.Join(m1, "file"), []byte("this is snap"))
	f.check()

	if err := f.c.CreateSnap(2, 1); err != nil {
		t.Fatal(err)
	}
	m2 := f.mount(f.activate(2, false))
	if got := readFile(t, filepath.Join(m2, "file")); got != "this is snap" {
		t.Fatalf("snapshot 2 of 1 has %q", got)
	}
	if got := readFile(t, filepath.Join(m0, "file")); got != "this is thin" {
		t.Fatalf("device 0 has %q after writes to its snapshot", got)
	}
	f.check()

	st, err := f.c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Active) != 3 {
		t.Fatalf("active devices %v, want 0, 1, 2", st.Active)
	}
	if err := f.c.Delete(0); !errors.Is(err, errdefs.ErrInUse) {
		t.Fatalf("delete of an active device: %v, want ErrInUse", err)
	}
	if err := f.c.Deactivate(0); !errors.Is(err, errdefs.ErrInUse) {
		t.Fatalf("deactivate of a mounted device: %v, want ErrInUse", err)
	}
	for _, m := range []string{m0, m1, m2} {
		if err := unix.Unmount(m, 0); err != nil {
			t.Fatal(err)
		}
	}
	for id := range uint32(3) {
		f.run("e2fsck", "-fn", st.Active[id])
		if err := f.c.Deactivate(id); err != nil {
			t.Fatal(err)
		}
	}
	f.check()
	if err := f.c.Delete(1); err != nil {
		t.Fatal(err)
	}
	f.check()
}

// TestCrash kills the server while a file system on its device is being
// written: what was synced survives, the journal replays, fsck is clean.
func TestCrash(t *testing.T) {
	f := newFixture(t, thinp.Options{DataSize: 4 << 30})
	if err := f.c.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	m := f.mount(f.activate(0, true))
	synced := bytes.Repeat([]byte("synced before the kill\n"), 100000)
	writeFile(t, filepath.Join(m, "synced"), synced)

	writer := exec.Command("dd", "if=/dev/urandom", "of="+filepath.Join(m, "unsynced"), "bs=1M", "count=512")
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { writer.Process.Kill(); writer.Wait() })
	time.Sleep(200 * time.Millisecond) // let some writes be in flight
	st, err := f.c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	writer.Wait()
	f.waitStopped()
	unmount(m) // the loop device clears itself once unmounted

	dev := f.activate(0, false)
	m = f.mount(dev) // replays the journal
	if got := readFile(t, filepath.Join(m, "synced")); got != string(synced) {
		t.Fatalf("synced file lost %d of %d bytes", len(synced)-len(got), len(synced))
	}
	unmount(m)
	f.run("e2fsck", "-fn", dev)
	if err := f.c.Deactivate(0); err != nil {
		t.Fatal(err)
	}
	f.check()
}

// TestNoSpace fills a small pool: the writer gets an error, status says
// the pool is out of data space, and after an online grow the same mounted
// file system takes writes again.
func TestNoSpace(t *testing.T) {
	f := newFixture(t, thinp.Options{DataSize: 96 << 20})
	if err := f.c.CreateThin(0, 512<<20); err != nil {
		t.Fatal(err)
	}
	// Every block of the file system's own metadata is written now (no
	// uninitialised groups), so that only file data meets the full pool:
	// ext4 goes read-only when a metadata write fails, as it does on a
	// kernel thin pool. No journal: mke2fs zeroes it with discards, which
	// unmap, so that its first pass would provision blocks, and fail, at
	// whatever moment the pool fills.
	dev := f.activate(0, false)
	f.run("mkfs.ext4", "-q", "-O", "^metadata_csum,^uninit_bg,^has_journal", "-E", "lazy_itable_init=0", dev)
	m := f.mount(dev)
	kept := bytes.Repeat([]byte("written before the pool filled\n"), 10000)
	writeFile(t, filepath.Join(m, "kept"), kept)

	// Direct writes meet the error themselves, not a later writeback.
	out, err := exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(m, "fill"), "bs=1M", "count=200", "oflag=direct").CombinedOutput()
	if err == nil {
		t.Fatalf("filling a 96 MiB pool succeeded:\n%s", out)
	}
	st, err := f.c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if !st.OutOfData {
		t.Fatalf("status after filling the pool: %+v", st.Status)
	}
	f.check()

	if err := f.c.Grow(1<<30, 0); err != nil {
		t.Fatal(err)
	}
	f.run("dd", "if=/dev/zero", "of="+filepath.Join(m, "after-grow"), "bs=1M", "count=200", "oflag=direct", "conv=fsync")
	if got := readFile(t, filepath.Join(m, "kept")); got != string(kept) {
		t.Fatal("a file written before the pool filled changed")
	}
	if st, err = f.c.Status(); err != nil {
		t.Fatal(err)
	}
	if st.OutOfData {
		t.Fatalf("status after grow and writes: %+v", st.Status)
	}
	unmount(m)
	f.run("e2fsck", "-fn", dev)
	if err := f.c.Deactivate(0); err != nil {
		t.Fatal(err)
	}
	f.check()
}

// TestDiscard frees blocks through the loop device (fstrim) and checks
// that a hole punched across partial blocks reads back as zeros there and
// leaves the rest.
func TestDiscard(t *testing.T) {
	f := newFixture(t, thinp.Options{DataSize: 1 << 30})
	if err := f.c.CreateThin(0, 256<<20); err != nil {
		t.Fatal(err)
	}
	dev := f.activate(0, true)
	m := f.mount(dev)
	f.run("dd", "if=/dev/urandom", "of="+filepath.Join(m, "big"), "bs=1M", "count=64", "conv=fsync")
	before := f.mapped(0)
	if err := os.Remove(filepath.Join(m, "big")); err != nil {
		t.Fatal(err)
	}
	// The file's blocks are free once the journal commits their release.
	f.run("sync", "-f", m)
	f.run("fstrim", m)
	// All of the file's blocks but a few it shares with ext4's metadata.
	if after := f.mapped(0); before-after < 60<<20/thinp.DefaultBlockSize {
		t.Fatalf("fstrim after removing 64 MiB: mapped blocks %d -> %d", before, after)
	}
	unmount(m)

	pattern := bytes.Repeat([]byte{0xa5}, 1<<20)
	file := filepath.Join(f.dir, devDir, "0") // the device's file, which the loop device reads
	fd, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if _, err := fd.WriteAt(pattern, 0); err != nil {
		t.Fatal(err)
	}
	const off, length = 1000, 300000 // from inside block 0 to inside block 4
	f.run("fallocate", "--punch-hole", "--offset", "1000", "--length", "300000", file)
	got := make([]byte, len(pattern))
	if _, err := fd.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(pattern)
	clear(want[off : off+length])
	if !bytes.Equal(got, want) {
		t.Fatal("the punched range is not zeros, or the rest changed")
	}
	fd.Close()
	if err := f.c.Deactivate(0); err != nil {
		t.Fatal(err)
	}
	f.check()
}

// mapped returns the data blocks device id maps.
func (f *fixture) mapped(id uint32) uint64 {
	f.t.Helper()
	st, err := f.c.Status()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, d := range st.Devices {
		if d.ID == id {
			return d.MappedBlocks
		}
	}
	f.t.Fatalf("no device %d", id)
	return 0
}

// TestHold keeps a server without active devices running until the hold
// is released.
func TestHold(t *testing.T) {
	f := newFixture(t, thinp.Options{DataSize: 1 << 30})
	hold, err := f.c.Hold()
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	if err := f.c.CreateThin(0, 1<<20); err != nil {
		t.Fatal(err)
	}
	pid := f.status().Pid
	if got := f.status().Pid; got != pid {
		t.Fatalf("held server %d was replaced by %d", pid, got)
	}
	hold.Close()
	f.waitStopped()
	if got := f.status().Pid; got == pid {
		t.Fatalf("server %d still answers after its hold was released", pid)
	}
}

func (f *fixture) status() Status {
	f.t.Helper()
	st, err := f.c.Status()
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

// TestDirtyLimit: an active device has its own strict dirty limit, and its
// loop device gets the kernel's defaults back when it is deactivated.
func TestDirtyLimit(t *testing.T) {
	f := newFixture(t, thinp.Options{DataSize: 1 << 30})
	if err := f.c.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	dev := f.activate(0, false)
	bdi := filepath.Join("/sys/block", filepath.Base(dev), "bdi")
	if _, err := os.Stat(filepath.Join(bdi, "strict_limit")); err != nil {
		t.Skipf("kernel without per-device dirty limits: %v", err)
	}
	read := func(name string) int64 {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(bdi, name))
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// max_bytes is kept as a fraction of the global limit: compare loosely.
	if strict, max := read("strict_limit"), read("max_bytes"); strict != 1 || max > 2*dirtyLimit {
		t.Errorf("active %s: strict_limit %d, max_bytes %d; want 1 and about %d", dev, strict, max, dirtyLimit)
	}
	if err := f.c.Deactivate(0); err != nil {
		t.Fatal(err)
	}
	if strict, ratio := read("strict_limit"), read("max_ratio"); strict != 0 || ratio != 100 {
		t.Errorf("deactivated %s: strict_limit %d, max_ratio %d; want 0 and 100", dev, strict, ratio)
	}
}
