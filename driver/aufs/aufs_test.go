package aufs_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/strata-storage/strata/driver"
	_ "github.com/strata-storage/strata/driver/aufs"
	"github.com/strata-storage/strata/driver/drivertest"
	"github.com/strata-storage/strata/errdefs"
)

// newDriverIn starts the aufs driver in the store root root.
func newDriverIn(t *testing.T, root string) driver.Driver {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("the conformance suite runs as root")
	}
	d, err := driver.New(root, "aufs", nil)
	if errors.Is(err, errdefs.ErrNotSupported) {
		t.Skipf("aufs does not work here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, newDriverIn)
}

// TestKilledServerRevived kills the mount server of a layer in use: the
// mount then fails every request, and the next Get mounts it again.
func TestKilledServerRevived(t *testing.T) {
	d := newDriverIn(t, t.TempDir())
	t.Cleanup(func() { d.Cleanup() })
	for _, id := range []string{"base", "child"} {
		parent := map[string]string{"child": "base"}[id]
		if err := d.CreateReadWrite(id, parent, nil); err != nil {
			t.Fatal(err)
		}
	}
	base, err := d.Get("base", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(base+"/a", []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Put("base")
	p, err := d.Get("child", "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("child")
	pid := serverOf(t, p)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	var st syscall.Statfs_t
	if err := syscall.Statfs(p, &st); !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
		t.Fatalf("statfs of a union whose server was killed: %v, want ENOTCONN or ECONNABORTED", err)
	}
	again, err := d.Get("child", "")
	if err != nil {
		t.Fatalf("Get after the server died: %v", err)
	}
	defer d.Put("child")
	if b, err := os.ReadFile(again + "/a"); err != nil || string(b) != "a" {
		t.Errorf("after the revival: %q, %v", b, err)
	}
	if n := mountsAt(t, p); n != 1 {
		t.Errorf("%d mounts at %s, want the new one only", n, p)
	}
}

// serverOf returns the pid of the mount server of the union at target.
func serverOf(t *testing.T, target string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 3 && args[3] == target {
			pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
			return pid
		}
	}
	t.Fatalf("no server process for %s", target)
	return 0
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for range 500 {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if strings.Contains(string(b), ") Z ") {
			return // a zombie: dead, not yet reaped
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("server %d still runs", pid)
}

func mountsAt(t *testing.T, p string) int {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(p))
	if err != nil {
		t.Fatal(err)
	}
	return len(mounts)
}

// TestStatus shows the mount mode and, once a union was mounted, whether
// it got passthrough.
func TestStatus(t *testing.T) {
	d := newDriverIn(t, t.TempDir())
	t.Cleanup(func() { d.Cleanup() })
	for _, id := range []string{"base", "child"} {
		if err := d.Create(id, map[string]string{"child": "base"}[id], nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Get("child", ""); err != nil {
		t.Fatal(err)
	}
	defer d.Put("child")
	status := map[string]string{}
	for _, kv := range d.Status() {
		status[kv[0]] = kv[1]
	}
	if !strings.HasPrefix(status["Mount Mode"], "fuse") || status["Dirs"] != "2" || !strings.HasPrefix(status["Max Branches"], "2") {
		t.Errorf("status %q", status)
	}
	if p := status["FUSE Passthrough"]; !strings.HasPrefix(p, "on") && !strings.HasPrefix(p, "off") {
		t.Errorf("FUSE Passthrough: %q, want what the mount got", p)
	}
}
