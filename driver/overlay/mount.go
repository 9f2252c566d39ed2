package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// errOldKernel means the kernel lacks fsopen or overlay's "lowerdir+"
// (before Linux 6.8): mount(2) with one page of options must do.
var errOldKernel = errors.New("no lowerdir+ in this kernel")

// mountOverlay mounts an overlay at target. lowers are nearest first;
// without upper the mount is read-only. All paths are under root.
func mountOverlay(root, target string, lowers []string, upper, work string) error {
	err := mountNewAPI(target, lowers, upper, work)
	if errors.Is(err, errOldKernel) {
		return mountLegacy(root, target, lowers, upper, work)
	}
	return err
}

// mountNewAPI mounts with fsopen/fsconfig: each lower directory is its own
// "lowerdir+" call, so the depth of a stack is not bounded by one page of
// mount options.
func mountNewAPI(target string, lowers []string, upper, work string) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return errOldKernel
	}
	if err != nil {
		return fmt.Errorf("mount overlay at %s: fsopen: %w", target, err)
	}
	defer unix.Close(fd)

	set := func(key, value string) error {
		if err := unix.FsconfigSetString(fd, key, value); err != nil {
			return fmt.Errorf("mount overlay at %s: %s=%s: %w%s", target, key, value, err, kernelLog(fd))
		}
		return nil
	}
	for i, dir := range lowers {
		err := set("lowerdir+", dir)
		if i == 0 && errors.Is(err, unix.EINVAL) {
			return errOldKernel
		}
		if err != nil {
			return err
		}
	}
	attrs := 0
	if upper != "" {
		if err := set("upperdir", upper); err != nil {
			return err
		}
		if err := set("workdir", work); err != nil {
			return err
		}
	} else {
		attrs = unix.MOUNT_ATTR_RDONLY
	}
	// The inodes index only matters for hard links across layers on NFS
	// export; off keeps layers movable between hosts and kernels.
	if err := set("index", "off"); err != nil {
		return err
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("mount overlay at %s: %w%s", target, err, kernelLog(fd))
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fmt.Errorf("mount overlay at %s: fsmount: %w%s", target, err, kernelLog(fd))
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount overlay at %s: move_mount: %w", target, err)
	}
	return nil
}

// mountLegacy mounts with mount(2), whose options must fit in one page:
// paths are made relative to root and the mount runs in a thread of its
// own whose working directory is root (4096 bytes hold some 140 short
// links l/<26 chars>).
func mountLegacy(root, target string, lowers []string, upper, work string) error {
	rel := func(p string) (string, error) { return filepath.Rel(root, p) }
	var rels []string
	for _, l := range lowers {
		r, err := rel(l)
		if err != nil {
			return err
		}
		rels = append(rels, r)
	}
	opts := "lowerdir=" + strings.Join(rels, ":")
	flags := uintptr(unix.MS_RDONLY)
	if upper != "" {
		u, err := rel(upper)
		if err != nil {
			return err
		}
		w, err := rel(work)
		if err != nil {
			return err
		}
		opts += ",upperdir=" + u + ",workdir=" + w
		flags = 0
	}
	opts += ",index=off"
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("mount overlay at %s: %d lower layers do not fit in one page of mount options on this kernel (before Linux 6.8)",
			target, len(lowers))
	}
	return inDir(root, func() error {
		if err := unix.Mount("overlay", target, "overlay", flags, opts); err != nil {
			return fmt.Errorf("mount overlay at %s: %w", target, err)
		}
		return nil
	})
}

// inDir runs fn on an OS thread whose working directory alone is dir: the
// thread stops sharing its file system context with the process, and it
// ends with the goroutine instead of serving others.
func inDir(dir string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare CLONE_FS: %w", err)
			return
		}
		if err := unix.Chdir(dir); err != nil {
			errc <- &os.PathError{Op: "chdir", Path: dir, Err: err}
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// kernelLog returns the messages the kernel left on an fs context, which
// say why a mount option was refused.
func kernelLog(fd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for range 8 {
		n, err := unix.Read(fd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	if len(msgs) == 0 {
		return ""
	}
	return " (" + strings.Join(msgs, "; ") + ")"
}

// unmount detaches the mount at target; a target that is not mounted is
// not an error, so callers can unmount whatever a crash left.
func unmount(target string) error {
	err := unix.Unmount(target, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return &os.PathError{Op: "unmount", Path: target, Err: err}
}
