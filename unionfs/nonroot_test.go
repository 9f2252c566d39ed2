package unionfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/strata-storage/strata/internal/reexec"
)

const nonRootEntry = "unionfs-test-nonroot"

func init() {
	reexec.Register(nonRootEntry, nonRootChild)
}

// nonRootChild mounts the union of os.Args[2:] at os.Args[1], writable,
// changes it, and says what it saw. It runs in a user namespace of its
// own, without any capability of the host, whose only id is the host's
// root (a file owned by another id it may read but, as the kernel rules
// for ids a namespace lacks, not write).
func nonRootChild() int {
	mnt := os.Args[1]
	u, err := Mount(mnt, Options{Branches: os.Args[2:], Writable: true, Passthrough: true})
	if err != nil {
		fmt.Println("mount:", err)
		return 1
	}
	defer u.Wait()
	defer u.Unmount()
	b, err := os.ReadFile(mnt + "/f") // owned by an id the namespace lacks
	if err == nil && string(b) != "lower" {
		err = fmt.Errorf("f reads %q", b)
	}
	if err == nil {
		err = errors.Join(
			os.WriteFile(mnt+"/g", []byte("changed"), 0o644),
			os.WriteFile(mnt+"/new", []byte("new"), 0o600),
			os.Mkdir(mnt+"/d", 0o755),
			os.Remove(mnt+"/gone"),
		)
	}
	if err == nil {
		if chown := os.Lchown(mnt+"/new", 1000, 1000); !errors.Is(chown, syscall.EINVAL) {
			err = fmt.Errorf("chown to an id the namespace lacks: %v, want EINVAL", chown)
		}
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Printf("ok passthrough=%v\n", u.Passthrough())
	return 0
}

// TestUnprivileged runs the union without the host's privileges, in a user
// namespace, as rootless container tools run it (a plain user would need
// /dev/fuse open to all, which it is not on every host). It works, falls
// back from passthrough (which needs CAP_SYS_ADMIN of the host), new files
// belong to its own user, and owners it has no id for cannot be given
// (vfs-like ownership).
func TestUnprivileged(t *testing.T) {
	needRoot(t) // to make the user namespace
	base, err := os.MkdirTemp("", "unionfs-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	upper, lower, mnt := filepath.Join(base, "upper"), filepath.Join(base, "lower"), filepath.Join(base, "mnt")
	for _, dir := range []string{upper, lower, mnt} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(os.WriteFile(lower+"/f", []byte("lower"), 0o644), os.Chown(lower+"/f", 7, 8),
		os.WriteFile(lower+"/g", []byte("lower"), 0o644), os.WriteFile(lower+"/gone", nil, 0o644)); err != nil {
		t.Fatal(err)
	}
	cmd := reexec.Command(nonRootEntry, mnt, upper, lower)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
	}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EINVAL) {
		t.Skipf("no user namespaces here: %v", err)
	}
	if err != nil || !strings.HasPrefix(string(out), "ok") {
		t.Fatalf("child: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "passthrough=false") {
		t.Errorf("child: %s; want passthrough refused without the host's CAP_SYS_ADMIN", out)
	}
	for name, body := range map[string]string{"g": "changed", "new": "new"} {
		var st syscall.Stat_t
		if err := syscall.Lstat(upper+"/"+name, &st); err != nil || st.Uid != 0 {
			t.Errorf("%s in the upper branch: owner %d (%v), want the server's own 0", name, st.Uid, err)
		}
		if got := read(t, upper+"/"+name); got != body {
			t.Errorf("%s holds %q, want %q", name, got, body)
		}
	}
	if _, err := os.Lstat(upper + "/.wh.gone"); err != nil {
		t.Errorf("whiteout of gone: %v", err)
	}
	if got := read(t, lower+"/g"); got != "lower" {
		t.Errorf("lower branch changed: %q", got)
	}
}
