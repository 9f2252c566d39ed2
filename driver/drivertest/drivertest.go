// Package drivertest is the conformance suite every graph driver runs
// through one constructor. The cases come from the bugs peers shipped:
// moby's graphtest and containerd's snapshotter testsuite.
package drivertest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
	"golang.org/x/sys/unix"
)

// Run runs every case against its own store root, a fresh t.TempDir().
// newDriver starts the driver with its state under root, as driver.New
// does; the cases on several processes start more than one driver on one
// root, each standing for a process, and one starts the test binary again
// as a child process. Drivers are cleaned up after each case.
func Run(t *testing.T, newDriver func(t *testing.T, root string) driver.Driver) {
	cases := []struct {
		name string
		fn   func(*testing.T, driver.Driver)
	}{
		{"EmptyRootIs0755", testEmptyRootIs0755},
		{"OwnershipAndSpecialModes", testOwnershipAndSpecialModes},
		{"ChildSeesParent", testChildSeesParent},
		{"DeepStack128", testDeepStack128},
		{"DiffApplyReproduces", testDiffApplyReproduces},
		{"ChangeList", testChangeList},
		{"SameSecondModification", testSameSecondModification},
		{"RewriteKeepingSizeAndMtime", testRewriteKeepingSizeAndMtime},
		{"DirRemovedInLower", testDirRemovedInLower},
		{"Chown", testChown},
		{"DirPermissions", testDirPermissions},
		{"DeletedFilesInChild", testDeletedFilesInChild},
		{"HardLinkMovedFromLower", testHardLinkMovedFromLower},
		{"RemoveWithChildrenRefused", testRemoveWithChildrenRefused},
		{"RemoveMountedRefused", testRemoveMountedRefused},
		{"ConcurrentGetPut", testConcurrentGetPut},
		{"RemoveThenRecreate", testRemoveThenRecreate},
		{"ReadWriteLayerWritable", testReadWriteLayerWritable},
		{"Cleanup", testCleanup},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.fn(t, open(t, newDriver, t.TempDir()))
		})
	}
	processCases := []struct {
		name string
		fn   func(t *testing.T, root string, open func(root string) driver.Driver)
	}{
		{"TwoProcessesShareOneMount", testTwoProcessesShareOneMount},
		{"PinOutlivesCleanup", testPinOutlivesCleanup},
		{"RemovePinnedRefused", testRemovePinnedRefused},
		{"CrashedProcessMountRecovered", testCrashedProcessMountRecovered},
		{"ConcurrentGetPutTwoProcesses", testConcurrentGetPutTwoProcesses},
	}
	for _, c := range processCases {
		t.Run(c.name, func(t *testing.T) {
			root := os.Getenv(childEnv) // the child of a crash case shares its parent's
			if root == "" {
				root = t.TempDir()
			}
			c.fn(t, root, func(root string) driver.Driver { return open(t, newDriver, root) })
		})
	}
}

// open starts a driver on root that is cleaned up at the end of t; a case
// may clean it up earlier.
func open(t *testing.T, newDriver func(*testing.T, string) driver.Driver, root string) driver.Driver {
	d := newDriver(t, root)
	t.Cleanup(func() {
		if err := d.Cleanup(); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	return d
}

func testEmptyRootIs0755(t *testing.T, d driver.Driver) {
	create(t, d, "base", "")
	root := get(t, d, "base")
	defer put(t, d, "base")
	st := lstat(t, root)
	if st.Mode != unix.S_IFDIR|0o755 || st.Uid != 0 || st.Gid != 0 {
		t.Errorf("base layer root: mode %o owner %d:%d, want dir 0755 0:0", st.Mode, st.Uid, st.Gid)
	}
	if n := names(t, root); len(n) != 0 {
		t.Errorf("base layer root holds %q, want nothing", n)
	}
	if !d.Exists("base") || d.Exists("nothing") {
		t.Error("Exists is wrong")
	}
}

func testOwnershipAndSpecialModes(t *testing.T, d driver.Driver) {
	create(t, d, "base", "",
		owned(dir("toto", 0o705|01000), 1, 2),    // sticky
		withMode(file("file", "x"), 0o222|04000), // setuid
	)
	create(t, d, "child", "base")
	for _, id := range []string{"base", "child"} {
		root := get(t, d, id)
		if st := lstat(t, filepath.Join(root, "toto")); st.Mode != unix.S_IFDIR|unix.S_ISVTX|0o705 || st.Uid != 1 || st.Gid != 2 {
			t.Errorf("%s: toto: mode %o owner %d:%d, want sticky dir 0705 1:2", id, st.Mode, st.Uid, st.Gid)
		}
		if st := lstat(t, filepath.Join(root, "file")); st.Mode != unix.S_IFREG|unix.S_ISUID|0o222 {
			t.Errorf("%s: file: mode %o, want setuid 0222", id, st.Mode)
		}
		put(t, d, id)
	}
}

func testChildSeesParent(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", file("a", "hello"), dir("d", 0o755), file("d/b", "b"), symlink("s", "a"))
	create(t, d, "child", "base")
	createRW(t, d, "top", "child")
	for _, id := range []string{"child", "top"} {
		root := get(t, d, id)
		if got := readFile(t, filepath.Join(root, "s")); got != "hello" {
			t.Errorf("%s: s -> a reads %q, want hello", id, got)
		}
		if got := readFile(t, filepath.Join(root, "d/b")); got != "b" {
			t.Errorf("%s: d/b reads %q", id, got)
		}
		put(t, d, id)
	}
}

func testDeepStack128(t *testing.T, d driver.Driver) {
	parent := ""
	for i := range 130 {
		id := fmt.Sprintf("layer%03d", i)
		create(t, d, id, parent, file(fmt.Sprintf("f%03d", i), id))
		parent = id
		if i+1 == 128 || i+1 == 130 {
			checkStack(t, d, id, i+1)
		}
	}
	createRW(t, d, "top", parent)
	checkStack(t, d, "top", 130)
}

// checkStack checks that layer id shows the files f000.. of n layers.
func checkStack(t *testing.T, d driver.Driver, id string, n int) {
	t.Helper()
	root := get(t, d, id)
	defer put(t, d, id)
	got := names(t, root)
	if len(got) != n {
		t.Fatalf("%s shows %d files, want %d", id, len(got), n)
	}
	for i := range n {
		if body := readFile(t, filepath.Join(root, fmt.Sprintf("f%03d", i))); body != fmt.Sprintf("layer%03d", i) {
			t.Errorf("%s: f%03d reads %q", id, i, body)
		}
	}
}

func testDiffApplyReproduces(t *testing.T, d driver.Driver) {
	create(t, d, "base", "",
		file("a", "aaa"), file("b", "bbb"), dir("d", 0o755), file("d/c", "ccc"), file("d/e", "eee"),
		file("keep", "keep"), hardlink("keeplink", "keep"), dir("o", 0o755), file("o/hidden", "h"))
	create(t, d, "layer", "base",
		file("a", "changed"), whiteout("b"), file("new", "new"), symlink("link", "new"),
		withMode(dir("d", 0o750), 0o750), file("d/f", "fff"), whiteout("d/e"),
		owned(file("owned", "o"), 7, 8), withMode(file("setuid", "s"), 04755),
		dir("o", 0o755), opaque("o"), file("o/kept", "kept"))
	layerTar := diff(t, d, "layer", "base")
	size, err := d.DiffSize("layer", "base")
	if err != nil {
		t.Fatal(err)
	}
	create(t, d, "copy", "base")
	if n := apply(t, d, "copy", "base", layerTar); n != size {
		t.Errorf("ApplyDiff of the diff wrote %d bytes, DiffSize says %d", n, size)
	}
	layer, copied := get(t, d, "layer"), get(t, d, "copy")
	defer put(t, d, "layer")
	defer put(t, d, "copy")
	checkSameTree(t, copied, layer)
	mustNotExist(t, filepath.Join(copied, "b"))
	mustNotExist(t, filepath.Join(copied, "d/e"))
	mustNotExist(t, filepath.Join(copied, "o/hidden"))
}

func testChangeList(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", file("a", "a"), file("b", "b"), dir("d", 0o755), file("d/x", "x"), file("k", "k"),
		dir("o", 0o755), file("o/1", "1"), file("o/2", "2"))
	create(t, d, "child", "base",
		file("a", "AA"), whiteout("b"), file("c", "c"),
		withTime(dir("d", 0o755), epoch.Add(time.Hour)), file("d/y", "y"),
		withTime(dir("o", 0o755), epoch.Add(time.Hour)), opaque("o"), file("o/2", "two"))
	checkChanges(t, d, "child", "base", "C /a", "D /b", "A /c", "C /d", "A /d/y", "C /o", "D /o/1", "C /o/2")
	checkChanges(t, d, "base", "", "A /a", "A /b", "A /d", "A /d/x", "A /k", "A /o", "A /o/1", "A /o/2")
}

// testSameSecondModification is moby #31805: a file rewritten with the same
// size within the second of its parent's copy was reported unchanged.
func testSameSecondModification(t *testing.T, d driver.Driver) {
	created := time.Date(2024, 5, 6, 7, 8, 9, 100_000_000, time.UTC)
	createRW(t, d, "base", "")
	root := get(t, d, "base")
	writeFile(t, filepath.Join(root, "f"), "a", created)
	put(t, d, "base")

	createRW(t, d, "child", "base")
	root = get(t, d, "child")
	writeFile(t, filepath.Join(root, "f"), "b", created.Add(200*time.Millisecond))
	put(t, d, "child")
	checkChanges(t, d, "child", "base", "C /f")
}

// testRewriteKeepingSizeAndMtime: a file rewritten with content of the same
// size and its mtime put back (cp -p, tar -x, rsync -t do that) is still a
// change; a tree comparison that trusts size and mtime misses it.
func testRewriteKeepingSizeAndMtime(t *testing.T, d driver.Driver) {
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	createRW(t, d, "base", "")
	root := get(t, d, "base")
	writeFile(t, filepath.Join(root, "f"), "old", mtime)
	writeFile(t, filepath.Join(root, "g"), "same", mtime)
	put(t, d, "base")

	createRW(t, d, "child", "base")
	root = get(t, d, "child")
	writeFile(t, filepath.Join(root, "f"), "new", mtime)
	put(t, d, "child")
	checkChanges(t, d, "child", "base", "C /f")
}

func writeFile(t *testing.T, p, body string, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// testDirRemovedInLower: a directory deleted in one layer and made again
// in the next must not show the files of the first.
func testDirRemovedInLower(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", dir("lib", 0o755), file("lib/a", "a"))
	create(t, d, "removed", "base", whiteout("lib"))
	create(t, d, "again", "removed", dir("lib", 0o755), file("lib/a", "new a"), file("lib/b", "b"))
	createRW(t, d, "top", "again")

	root := get(t, d, "removed")
	mustNotExist(t, filepath.Join(root, "lib"))
	put(t, d, "removed")
	for _, id := range []string{"again", "top"} {
		root := get(t, d, id)
		if got := names(t, filepath.Join(root, "lib")); !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("%s: lib holds %q, want [a b]", id, got)
		}
		if got := readFile(t, filepath.Join(root, "lib/a")); got != "new a" {
			t.Errorf("%s: lib/a reads %q, want the new one", id, got)
		}
		put(t, d, id)
	}
	checkChanges(t, d, "removed", "base", "D /lib")
	checkChanges(t, d, "again", "removed", "A /lib", "A /lib/a", "A /lib/b")
}

func testChown(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", dir("dir", 0o755), file("dir/file", "f"))
	createRW(t, d, "child", "base")
	root := get(t, d, "child")
	for p, owner := range map[string]int{"dir": 1000, "dir/file": 1001} {
		if err := os.Lchown(filepath.Join(root, p), owner, owner); err != nil {
			t.Fatal(err)
		}
	}
	put(t, d, "child")
	checkChanges(t, d, "child", "base", "C /dir", "C /dir/file")

	create(t, d, "copy", "base")
	apply(t, d, "copy", "base", diff(t, d, "child", "base"))
	root = get(t, d, "copy")
	defer put(t, d, "copy")
	for p, owner := range map[string]uint32{"dir": 1000, "dir/file": 1001} {
		if st := lstat(t, filepath.Join(root, p)); st.Uid != owner || st.Gid != owner {
			t.Errorf("copy: %s owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, owner, owner)
		}
	}
	base := get(t, d, "base")
	defer put(t, d, "base")
	if st := lstat(t, filepath.Join(base, "dir/file")); st.Uid != 0 {
		t.Errorf("base: dir/file owned by %d after chown in child", st.Uid)
	}
}

func testDirPermissions(t *testing.T, d driver.Driver) {
	modes := map[string]uint32{"a": 0o700, "a/b": 0o750, "c": 0o711, "c/d": 0o1777}
	create(t, d, "base", "",
		dir("a", 0o700), dir("a/b", 0o750), dir("c", 0o711), withMode(dir("c/d", 0o777), 0o1777))
	create(t, d, "child", "base")
	for _, id := range []string{"base", "child"} {
		root := get(t, d, id)
		for p, mode := range modes {
			if st := lstat(t, filepath.Join(root, p)); st.Mode&07777 != mode {
				t.Errorf("%s: %s has mode %o, want %o", id, p, st.Mode&07777, mode)
			}
		}
		put(t, d, id)
	}

	createRW(t, d, "chmod", "base")
	root := get(t, d, "chmod")
	if err := os.Chmod(filepath.Join(root, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, d, "chmod")
	checkChanges(t, d, "chmod", "base", "C /a")
	root = get(t, d, "base")
	defer put(t, d, "base")
	if st := lstat(t, filepath.Join(root, "a")); st.Mode&07777 != 0o700 {
		t.Errorf("base: a has mode %o after chmod in child", st.Mode&07777)
	}
}

func testDeletedFilesInChild(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", file("a", "a"), dir("d", 0o755), file("d/b", "b"), file("d/c", "c"), file("k", "k"))
	createRW(t, d, "child", "base")
	root := get(t, d, "child")
	if err := errors.Join(os.Remove(filepath.Join(root, "a")), os.RemoveAll(filepath.Join(root, "d"))); err != nil {
		t.Fatal(err)
	}
	put(t, d, "child")
	checkChanges(t, d, "child", "base", "D /a", "D /d")

	create(t, d, "copy", "base")
	apply(t, d, "copy", "base", diff(t, d, "child", "base"))
	createRW(t, d, "grandchild", "child")
	for _, id := range []string{"copy", "grandchild"} {
		root := get(t, d, id)
		if got := names(t, root); !slices.Equal(got, []string{"k"}) {
			t.Errorf("%s holds %q, want [k]", id, got)
		}
		put(t, d, id)
	}
}

// testHardLinkMovedFromLower: a file with a second hard link in the parent
// is renamed in the child; the child's diff must rebuild the same tree.
func testHardLinkMovedFromLower(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", dir("a", 0o755), file("a/f", "data"), hardlink("a/g", "a/f"))
	createRW(t, d, "child", "base")
	root := get(t, d, "child")
	if err := os.Mkdir(filepath.Join(root, "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, "a/f"), filepath.Join(root, "b/f")); err != nil {
		t.Fatal(err)
	}
	put(t, d, "child")

	create(t, d, "copy", "base")
	apply(t, d, "copy", "base", diff(t, d, "child", "base"))
	child, copied := get(t, d, "child"), get(t, d, "copy")
	defer put(t, d, "child")
	defer put(t, d, "copy")
	checkSameTree(t, copied, child)
	mustNotExist(t, filepath.Join(copied, "a/f"))
	for _, p := range []string{"a/g", "b/f"} {
		if got := readFile(t, filepath.Join(copied, p)); got != "data" {
			t.Errorf("copy: %s reads %q, want data", p, got)
		}
	}
}

func testRemoveWithChildrenRefused(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", file("a", "a"))
	create(t, d, "child", "base")
	createRW(t, d, "top", "child")
	for _, id := range []string{"base", "child"} {
		if err := d.Remove(id); !errors.Is(err, errdefs.ErrInUse) {
			t.Errorf("Remove(%s) with a child: %v, want ErrInUse", id, err)
		}
	}
	for _, id := range []string{"top", "child", "base"} {
		if err := d.Remove(id); err != nil {
			t.Fatalf("Remove(%s): %v", id, err)
		}
		if d.Exists(id) {
			t.Errorf("%s exists after Remove", id)
		}
	}
	if err := d.Remove("base"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second Remove: %v, want ErrNotFound", err)
	}
	if err := d.Create("orphan", "base", nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Create on a removed parent: %v, want ErrNotFound", err)
	}
}

func testRemoveMountedRefused(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", file("a", "a"))
	createRW(t, d, "child", "base")
	for _, id := range []string{"child", "base"} {
		get(t, d, id)
		if err := d.Remove(id); !errors.Is(err, errdefs.ErrInUse) {
			t.Errorf("Remove(%s) while mounted: %v, want ErrInUse", id, err)
		}
		put(t, d, id)
		if err := d.Remove(id); err != nil {
			t.Errorf("Remove(%s) after Put: %v", id, err)
		}
	}
	if err := d.Put("base"); err == nil {
		t.Error("Put of a layer never got: want an error")
	}
}

func testConcurrentGetPut(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", file("a", "a"))
	createRW(t, d, "child", "base")
	want := get(t, d, "child")
	put(t, d, "child")

	getPutConcurrently(t, want, d)
	if mounted, err := mountinfo.Mounted(want); err != nil || mounted {
		t.Errorf("%s still mounted after the last Put (%v)", want, err)
	}
	if err := d.Remove("child"); err != nil {
		t.Errorf("Remove after balanced Get/Put: %v", err)
	}
}

func testRemoveThenRecreate(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", file("a", "a"))
	create(t, d, "child", "base", file("b", "b"))
	for _, id := range []string{"child", "base"} {
		if err := d.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	create(t, d, "base", "")
	create(t, d, "child", "base", file("c", "c"))
	root := get(t, d, "child")
	defer put(t, d, "child")
	if got := names(t, root); !slices.Equal(got, []string{"c"}) {
		t.Errorf("recreated child holds %q, want [c]", got)
	}
	if err := d.Create("base", "", nil); !errors.Is(err, errdefs.ErrExists) {
		t.Errorf("Create of an existing id: %v, want ErrExists", err)
	}
}

func testReadWriteLayerWritable(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", file("a", "a"))
	createRW(t, d, "rw", "base")
	root := get(t, d, "rw")
	if err := errors.Join(
		os.WriteFile(filepath.Join(root, "a"), []byte("rewritten"), 0o644),
		os.WriteFile(filepath.Join(root, "new"), []byte("new"), 0o644),
		os.MkdirAll(filepath.Join(root, "x/y"), 0o755),
	); err != nil {
		t.Fatalf("write in a read-write layer: %v", err)
	}
	put(t, d, "rw")

	root = get(t, d, "rw")
	if got := readFile(t, filepath.Join(root, "a")) + readFile(t, filepath.Join(root, "new")); got != "rewrittennew" {
		t.Errorf("after Put and Get: %q", got)
	}
	put(t, d, "rw")
	base := get(t, d, "base")
	defer put(t, d, "base")
	if got := readFile(t, filepath.Join(base, "a")); got != "a" {
		t.Errorf("parent changed by a write in its child: %q", got)
	}
}

func testCleanup(t *testing.T, d driver.Driver) {
	create(t, d, "base", "", file("a", "a"))
	create(t, d, "ro", "base", file("b", "b"))
	var paths []string
	for _, id := range []string{"rw1", "rw2", "rw3"} {
		createRW(t, d, id, "ro")
		paths = append(paths, get(t, d, id))
	}
	paths = append(paths, get(t, d, "ro"), get(t, d, "rw1"), get(t, d, "base"))
	if err := d.Cleanup(); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if left := mountedUnder(t, paths...); len(left) > 0 {
		t.Errorf("mounted after Cleanup: %q", left)
	}
}

// getPutConcurrently has 16 goroutines, spread over the drivers (processes),
// Get, read and Put layer "child" 25 times each; every Get must return want.
func getPutConcurrently(t *testing.T, want string, drivers ...driver.Driver) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		d := drivers[i%len(drivers)]
		wg.Go(func() {
			for range 25 {
				p, err := d.Get("child", "")
				if err != nil {
					errs <- err
					return
				}
				b, err := os.ReadFile(filepath.Join(p, "a"))
				if err != nil || string(b) != "a" || p != want {
					err = fmt.Errorf("read a through %s (want %s): %q, %v", p, want, b, err)
				}
				if err := errors.Join(err, d.Put("child")); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
