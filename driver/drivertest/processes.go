package drivertest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
)

// Cases on several processes. Two drivers on one root in this process act
// as two processes: each registers itself and holds its own references.

func testTwoProcessesShareOneMount(t *testing.T, root string, open func(string) driver.Driver) {
	a, b := open(root), open(root)
	create(t, a, "base", "", file("a", "a"))
	createRW(t, a, "child", "base")
	pa, pb := get(t, a, "child"), get(t, b, "child")
	if pa != pb {
		t.Fatalf("two processes got %s and %s", pa, pb)
	}
	held := mountCount(t, pa)
	if held > 1 {
		t.Errorf("%s mounted %d times, want one mount shared", pa, held)
	}
	checkMounted(t, a, "child", 2)
	put(t, a, "child")
	if got := readFile(t, filepath.Join(pb, "a")); got != "a" {
		t.Errorf("after the other process's Put: a reads %q", got)
	}
	if n := mountCount(t, pb); n != held {
		t.Errorf("the other process's Put changed the mounts at %s: %d, was %d", pb, n, held)
	}
	checkMounted(t, b, "child", 1)
	put(t, b, "child")
	if n := mountCount(t, pb); n != 0 {
		t.Errorf("%s still mounted after the last Put", pb)
	}
	checkMounted(t, a, "child", 0)
}

func testPinOutlivesCleanup(t *testing.T, root string, open func(string) driver.Driver) {
	a := open(root)
	create(t, a, "base", "", file("a", "a"))
	createRW(t, a, "child", "base")
	p, err := a.Pin("child", "")
	if err != nil {
		t.Fatalf("Pin: %v", err)
	}
	get(t, a, "child") // Cleanup releases it, not the pin
	held := mountCount(t, p)
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	b := open(root) // alone: removes what nobody holds
	if n := mountCount(t, p); n != held {
		t.Errorf("mounts at %s after Cleanup and a restart: %d, want %d", p, n, held)
	}
	if got := readFile(t, filepath.Join(p, "a")); got != "a" {
		t.Errorf("pinned layer reads %q", got)
	}
	checkMounted(t, b, "child", 1)
	if g := get(t, b, "child"); g != p || mountCount(t, g) != held {
		t.Errorf("Get of a pinned layer: %s mounted %d times, want the pin's %s", g, mountCount(t, g), p)
	}
	put(t, b, "child")
	if err := b.Unpin("child"); err != nil {
		t.Fatalf("Unpin from another process: %v", err)
	}
	if n := mountCount(t, p); n != 0 {
		t.Errorf("%s still mounted after Unpin", p)
	}
	checkMounted(t, b, "child", 0)
	if err := b.Unpin("child"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Unpin of a layer not pinned: %v, want ErrInvalid", err)
	}
}

func testRemovePinnedRefused(t *testing.T, root string, open func(string) driver.Driver) {
	a, b := open(root), open(root)
	create(t, a, "base", "", file("a", "a"))
	createRW(t, a, "child", "base")
	for _, id := range []string{"child", "base"} {
		if _, err := a.Pin(id, ""); err != nil {
			t.Fatalf("Pin(%s): %v", id, err)
		}
		for _, d := range []driver.Driver{a, b} {
			if err := d.Remove(id); !errors.Is(err, errdefs.ErrInUse) {
				t.Errorf("Remove(%s) while pinned: %v, want ErrInUse", id, err)
			}
		}
		if err := b.Unpin(id); err != nil {
			t.Fatal(err)
		}
		if err := b.Remove(id); err != nil {
			t.Errorf("Remove(%s) after Unpin: %v", id, err)
		}
	}
}

func testCrashedProcessMountRecovered(t *testing.T, root string, open func(string) driver.Driver) {
	if os.Getenv(childEnv) != "" {
		holdUntilKilled(open(root), "child")
	}
	d := open(root)
	create(t, d, "base", "", file("a", "a"))
	createRW(t, d, "child", "base")

	// The next user of the layer replaces what the dead one left mounted.
	p := crashWhileHolding(t, d, root, "child")
	if g := get(t, d, "child"); g != p || mountCount(t, p) > 1 {
		t.Errorf("Get after a crash: %s mounted %d times, want %s once", g, mountCount(t, g), p)
	}
	put(t, d, "child")
	if n := mountCount(t, p); n != 0 {
		t.Errorf("%s mounted %d times after the last Put", p, n)
	}

	// Nobody uses it again: the next start that is alone unmounts it.
	p = crashWhileHolding(t, d, root, "child")
	if err := d.Cleanup(); err != nil {
		t.Fatal(err)
	}
	d = open(root)
	if left := mountedUnder(t, p); len(left) > 0 {
		t.Errorf("mounted after a restart: %q", left)
	}
	checkMounted(t, d, "child", 0)
	if err := d.Remove("child"); err != nil {
		t.Errorf("Remove after the crash was recovered: %v", err)
	}
}

// childEnv, when set, makes CrashedProcessMountRecovered the child: it
// Gets a layer in the store root the variable names, and holds it until it
// is killed.
const childEnv = "STRATA_DRIVERTEST_CHILD_ROOT"

const childReady = "drivertest child holds "

// crashWhileHolding starts the test binary again as a child process that
// Gets id on root, kills it while it holds the reference, and returns the
// path the child had. d, another process, sees the reference come and go.
func crashWhileHolding(t *testing.T, d driver.Driver, root, id string) string {
	t.Helper()
	var pattern []string
	for _, part := range strings.Split(t.Name(), "/") {
		pattern = append(pattern, "^"+regexp.QuoteMeta(part)+"$")
	}
	cmd := exec.Command(os.Args[0], "-test.run="+strings.Join(pattern, "/"), "-test.count=1", "-test.timeout=1m")
	cmd.Env = append(os.Environ(), childEnv+"="+root)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe() // the child exits when it closes: never orphaned
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	var path string
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		if p, ok := strings.CutPrefix(lines.Text(), childReady); ok {
			path = p
			break
		}
	}
	if path == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the child never held %s: %s", id, stderr.String())
	}
	checkMounted(t, d, id, 1)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait() // the kernel has released its flocks
	checkMounted(t, d, id, 0)
	return path
}

// holdUntilKilled is the child: it Gets id, reads through it, says where
// it is, and waits until it is killed or its parent goes.
func holdUntilKilled(d driver.Driver, id string) {
	p, err := d.Get(id, "")
	if err == nil {
		_, err = os.ReadFile(filepath.Join(p, "a"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(childReady + p)
	io.Copy(io.Discard, os.Stdin)
	os.Exit(1)
}

func testConcurrentGetPutTwoProcesses(t *testing.T, root string, open func(string) driver.Driver) {
	a, b := open(root), open(root)
	create(t, a, "base", "", file("a", "a"))
	createRW(t, a, "child", "base")
	want := get(t, a, "child")
	put(t, a, "child")

	getPutConcurrently(t, want, a, b)
	if n := mountCount(t, want); n != 0 {
		t.Errorf("%s mounted %d times after the last Put", want, n)
	}
	checkMounted(t, b, "child", 0)
	if err := b.Remove("child"); err != nil {
		t.Errorf("Remove after balanced Get/Put: %v", err)
	}
}

// checkMounted fails t unless d counts want references on id.
func checkMounted(t *testing.T, d driver.Driver, id string, want int) {
	t.Helper()
	n, err := d.Mounted(id)
	if err != nil {
		t.Fatalf("Mounted(%s): %v", id, err)
	}
	if n != want {
		t.Errorf("Mounted(%s) = %d, want %d", id, n, want)
	}
}
