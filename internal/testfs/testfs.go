// Package testfs makes real file systems for tests: a sparse image file,
// formatted with the file system's mkfs and mounted through a loop device,
// all of it undone when the test ends, failed or not. It needs root; tests
// of an ordinary user are skipped with that reason.
//
// On disk: the image is a file in a t.TempDir() of its own; the loop device
// is set up with autoclear, so it goes with the unmount (or with the
// failed mount) and never outlives the test.
package testfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// imageSize is the apparent size of the image file; only what is written
// takes space.
const imageSize = 2 << 30

// Btrfs returns the root of a fresh btrfs file system, mounted under
// t.TempDir() until the test ends.
func Btrfs(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	MountBtrfs(t, dir)
	return dir
}

// MountBtrfs mounts a fresh btrfs file system on the existing directory
// dir until the test ends.
func MountBtrfs(t testing.TB, dir string) {
	t.Helper()
	mount(t, dir, "btrfs", "mkfs.btrfs", "-q", "-f")
}

// mount formats a new image with mkfs and args and mounts it on dir.
func mount(t testing.TB, dir, fsType, mkfs string, args ...string) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skipf("a %s file system on a loop device needs root", fsType)
	}
	image := filepath.Join(t.TempDir(), fsType+".img")
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, imageSize); err != nil {
		t.Fatal(err)
	}
	if out, err := format(mkfs, append(args, image)...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", mkfs, err, out)
	}
	loop, err := attach(image)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Mount(loop.Name(), dir, fsType, 0, "")
	loop.Close() // the mount holds the device now; autoclear detaches it with the mount
	if errors.Is(err, unix.ENODEV) {
		t.Skipf("this kernel has no %s", fsType)
	}
	if err != nil {
		t.Fatalf("mount %s on %s: %v", fsType, dir, err)
	}
	t.Cleanup(func() {
		if err := unmount(dir); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// format returns the command running mkfs in a mount namespace of its own
// without FUSE mounts. mkfs.btrfs (before btrfs-progs 6.9) stats the source
// of every mount to make sure its target is not mounted, and gives up on
// the first that fails: a FUSE mount whose server died (ENOTCONN), which
// another test running at the same time may well leave for a moment.
func format(mkfs string, args ...string) *exec.Cmd {
	const script = `awk '$3 ~ /^fuse/ { print $2 }' /proc/self/mounts |
while read -r m; do umount -l "$(printf '%b' "$m")"; done
exec "$@"`
	cmd := exec.Command("sh", append([]string{"-c", script, "sh", mkfs}, args...)...)
	// Go makes the new namespace's mounts private: the unmounts stay in it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	return cmd
}

// attach sets up a free loop device on image, with autoclear: it detaches
// itself once neither a mount nor an open file holds it.
func attach(image string) (*os.File, error) {
	img, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	for range 100 { // others may take the free device first
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, os.NewSyscallError("LOOP_CTL_GET_FREE", err)
		}
		path := fmt.Sprintf("/dev/loop%d", n)
		if err := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, os.NewSyscallError("mknod "+path, err)
		}
		dev, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		config := unix.LoopConfig{Fd: uint32(img.Fd())}
		config.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &config)
		if err == nil {
			return dev, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, os.NewSyscallError("LOOP_CONFIGURE "+path, err)
		}
	}
	return nil, errors.New("no free loop device")
}

// unmount unmounts dir, waiting a little for whatever still has a file
// open there to let go, then lazily so that the device goes when it does.
func unmount(dir string) error {
	var err error
	for range 50 {
		if err = unix.Unmount(dir, 0); !errors.Is(err, unix.EBUSY) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return err
	}
	return fmt.Errorf("busy, detached lazily: %w", err)
}
