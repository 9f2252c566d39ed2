package btrfs

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/driver/drivertest"
	_ "github.com/strata-storage/strata/driver/vfs"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/internal/testfs"
)

// TestConformance runs every case on a btrfs file system of its own,
// mounted on the case's store root (a child process of a case finds it
// mounted already).
func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T, root string) driver.Driver {
		if driver.BackingFS(root) != "btrfs" {
			testfs.MountBtrfs(t, root)
		}
		return newDriver(t, root, nil)
	})
}

// newDriver starts the btrfs driver in the store root root.
func newDriver(t *testing.T, root string, options map[string]string) driver.Driver {
	t.Helper()
	d, err := driver.New(root, name, options)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// open starts the driver on a fresh btrfs, cleaned up at the end of t.
func open(t *testing.T) driver.Driver {
	t.Helper()
	d := newDriver(t, testfs.Btrfs(t), nil)
	t.Cleanup(func() { d.Cleanup() })
	return d
}

func layerTar(t *testing.T, files map[string]string) *bytes.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(buf.Bytes())
}

func createLayer(t *testing.T, d driver.Driver, id, parent string, files map[string]string) {
	t.Helper()
	if err := d.Create(id, parent, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ApplyDiff(id, parent, layerTar(t, files)); err != nil {
		t.Fatal(err)
	}
}

// TestCommittedLayersReadOnly: a layer made by Create is read-only once
// applied; a read-write layer on it is writable.
func TestCommittedLayersReadOnly(t *testing.T) {
	d := open(t)
	createLayer(t, d, "base", "", map[string]string{"a": "a"})
	createLayer(t, d, "child", "base", map[string]string{"b": "b"})
	if err := d.CreateReadWrite("rw", "child", nil); err != nil {
		t.Fatal(err)
	}
	for id, wantRO := range map[string]bool{"base": true, "child": true, "rw": false} {
		m, err := d.Metadata(id)
		if err != nil {
			t.Fatal(err)
		}
		if m["ReadOnly"] != "true" && wantRO || m["ReadOnly"] == "true" && !wantRO {
			t.Errorf("%s: ReadOnly %s, want %v", id, m["ReadOnly"], wantRO)
		}
		err = os.WriteFile(filepath.Join(m["Dir"], "new"), nil, 0o644)
		if wantRO && !errors.Is(err, unix.EROFS) || !wantRO && err != nil {
			t.Errorf("%s: write: %v", id, err)
		}
	}
}

// TestSizeLimit: a container limited to 50M, by its own storage option or
// by the driver's, writes 25M, and is stopped cleanly (EDQUOT or ENOSPC,
// nothing worse) before it holds much more than 50M; its size then comes
// from the qgroup numbers.
func TestSizeLimit(t *testing.T) {
	limit := map[string]string{"size": "50M"}
	t.Run("StorageOpt", func(t *testing.T) {
		d := open(t)
		createLayer(t, d, "base", "", map[string]string{"a": "a"})
		if err := d.CreateReadWrite("limited", "base", &driver.CreateOpts{StorageOpt: limit}); err != nil {
			t.Fatal(err)
		}
		checkLimited(t, d)
	})
	t.Run("DriverOption", func(t *testing.T) {
		d := newDriver(t, testfs.Btrfs(t), limit)
		defer d.Cleanup()
		createLayer(t, d, "base", "", map[string]string{"a": "a"})
		if err := d.CreateReadWrite("limited", "base", nil); err != nil {
			t.Fatal(err)
		}
		checkLimited(t, d)
	})
}

// checkLimited checks that layer "limited" on "base" holds 50M at most.
func checkLimited(t *testing.T, d driver.Driver) {
	root, err := d.Get("limited", "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("limited")
	chunk := bytes.Repeat([]byte{'x'}, 1<<20)
	write := func(name string, max int) (int, error) {
		f, err := os.Create(filepath.Join(root, name))
		if err != nil {
			return 0, err
		}
		defer f.Close()
		written := 0
		for written < max {
			n, err := f.Write(chunk)
			written += n
			if err == nil {
				err = f.Sync() // the limit is checked against what is on disk
			}
			if err != nil {
				return written, err
			}
		}
		return written, nil
	}
	if _, err := write("first", 25<<20); err != nil {
		t.Fatalf("writing 25M under a 50M limit: %v", err)
	}
	n, err := write("second", 100<<20)
	if !errors.Is(err, unix.EDQUOT) && !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("writing past a 50M limit: %d bytes more, then %v; want EDQUOT or ENOSPC", n, err)
	}
	if total := 25<<20 + n; total > 55<<20 {
		t.Errorf("a container limited to 50M wrote %d MiB", total>>20)
	}
	size, err := d.DiffSize("limited", "base")
	if err != nil {
		t.Fatal(err)
	}
	if size < 25<<20 || size > 60<<20 {
		t.Errorf("DiffSize = %d, want what was written, %d", size, 25<<20+n)
	}
	if quota := status(d)["Quota"]; quota != "on" {
		t.Errorf("Status Quota = %q, want on", quota)
	}
}

func status(d driver.Driver) map[string]string {
	m := map[string]string{}
	for _, kv := range d.Status() {
		m[kv[0]] = kv[1]
	}
	return m
}

func TestSizeOptionRefused(t *testing.T) {
	d := open(t)
	for _, opt := range []map[string]string{{"size": "lots"}, {"size": "-1G"}, {"inodes": "10"}} {
		if err := d.CreateReadWrite("rw", "", &driver.CreateOpts{StorageOpt: opt}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("CreateReadWrite with %v: %v, want ErrInvalid", opt, err)
		}
	}
	if d.Exists("rw") {
		t.Error("a refused layer exists")
	}
	if _, err := driver.New(t.TempDir(), name, map[string]string{"size": "big"}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("driver option size=big: %v, want ErrInvalid", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"1024": 1024, "50M": 50 << 20, "10G": 10 << 30, "10GB": 10 << 30, "1.5g": 3 << 29, "2GiB": 2 << 30, "4k": 4096} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-5M", "nan", "0", "1e30T"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

// TestNestedSubvolumesRemoved: subvolumes a container made inside its own,
// at any depth and read-only or not, go with it.
func TestNestedSubvolumesRemoved(t *testing.T) {
	d := open(t)
	createLayer(t, d, "base", "", map[string]string{"a": "a"})
	if err := d.CreateReadWrite("rw", "base", nil); err != nil {
		t.Fatal(err)
	}
	root, err := d.Get("rw", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "var/lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"top", "var/lib/inner", "var/lib/inner/deeper", "top/ro"} {
		if err := createSubvolume(filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := createSubvolume(filepath.Join(root, "top/ro/inside")); err != nil {
		t.Fatal(err)
	}
	if err := setReadOnly(filepath.Join(root, "top/ro"), true); err != nil {
		t.Fatal(err)
	}
	if err := d.Put("rw"); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove("rw"); err != nil {
		t.Fatalf("Remove of a layer holding subvolumes: %v", err)
	}
	if _, err := os.Lstat(root); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still there: %v", root, err)
	}
	if err := d.Remove("base"); err != nil {
		t.Errorf("Remove(base) once its child is gone: %v", err)
	}
}

// TestNotBtrfs: anywhere else the driver is not supported, says why in one
// line, and leaves nothing behind.
func TestNotBtrfs(t *testing.T) {
	storeRoot := t.TempDir()
	if driver.BackingFS(storeRoot) == "btrfs" {
		t.Skip("the temporary directory is on btrfs")
	}
	_, err := driver.New(storeRoot, name, nil)
	if !errors.Is(err, errdefs.ErrNotSupported) {
		t.Fatalf("btrfs on %s: %v, want ErrNotSupported", driver.BackingFS(storeRoot), err)
	}
	prefix := "storage driver btrfs not supported here: " + filepath.Join(storeRoot, name) + " is on "
	msg := errdefs.Message(err)
	if fsType, ok := strings.CutPrefix(msg, prefix); !ok || fsType == "" || strings.Contains(fsType, "\n") {
		t.Errorf("message %q, want %q and the file system's type", msg, prefix)
	}
	if _, err := os.Lstat(filepath.Join(storeRoot, name)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused driver left its root: %v", err)
	}
}

// TestChosenOnBtrfs: with no driver named, a store on btrfs gets btrfs
// rather than vfs, and a store elsewhere vfs.
func TestChosenOnBtrfs(t *testing.T) {
	for _, c := range []struct {
		root string
		want string
	}{{testfs.Btrfs(t), "btrfs"}, {t.TempDir(), "vfs"}} {
		if c.want == "vfs" && driver.BackingFS(c.root) == "btrfs" {
			continue
		}
		d, err := driver.New(c.root, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if d.String() != c.want {
			t.Errorf("chosen on %s: %s, want %s", driver.BackingFS(c.root), d, c.want)
		}
		d.Cleanup()
	}
}

// TestLeftoversRemoved: what a crash mid-Create or mid-Remove leaves is
// gone at the next start, and the layers stay.
func TestLeftoversRemoved(t *testing.T) {
	storeRoot := testfs.Btrfs(t)
	d := newDriver(t, storeRoot, nil)
	createLayer(t, d, "base", "", map[string]string{"a": "a"})
	leftovers := []string{"meta/.tmp-a", "meta/orphan"}
	for _, p := range leftovers {
		if err := os.MkdirAll(filepath.Join(storeRoot, name, p, "x"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	other := newDriver(t, storeRoot, nil) // its owner may be at work
	for _, p := range leftovers {
		if _, err := os.Lstat(filepath.Join(storeRoot, name, p)); err != nil {
			t.Errorf("%s removed while another driver uses the root: %v", p, err)
		}
	}
	other.Cleanup()
	d.Cleanup() // the crash: every user of the root is gone
	d = newDriver(t, storeRoot, nil)
	defer d.Cleanup()
	for _, p := range leftovers {
		if _, err := os.Lstat(filepath.Join(storeRoot, name, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived the restart: %v", p, err)
		}
	}
	if !d.Exists("base") {
		t.Error("base lost at restart")
	}
}
