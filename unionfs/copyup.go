package unionfs

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// copyUp gives the node a copy in the writable branch, with its content,
// mode, owner, times and xattrs, made in the work directory (file data
// synced) and renamed into place: a crash leaves the lower file showing
// or the whole copy, never half of it. Call it with the union locked alone.
func (n *node) copyUp() syscall.Errno { return n.copyUpAs(true) }

// copyUpAs copies the node up, its content only with data: an open with
// O_TRUNC is about to drop it.
func (n *node) copyUpAs(data bool) syscall.Errno {
	if n.e.branch == 0 {
		return 0
	}
	if n.e.isDir() {
		return n.copyUpDir()
	}
	if errno := n.up().copyUpDir(); errno != 0 {
		return errno
	}
	tmp, err := n.u.tempName()
	if err == nil {
		err = copyEntry(n.full(), tmp, &n.e.st, data, true)
	}
	return n.placeCopy(tmp, err)
}

// copyUpDir gives the directory node, and its parents, a directory in the
// writable branch; the lower ones keep merging into it.
func (n *node) copyUpDir() syscall.Errno {
	if n.e.branch == 0 {
		return 0
	}
	if errno := n.up().copyUpDir(); errno != 0 {
		return errno
	}
	tmp, err := n.u.tempName()
	if err == nil {
		err = copyEntry(n.full(), tmp, &n.e.st, false, false)
	}
	if errno := n.placeCopy(tmp, err); errno != 0 {
		return errno
	}
	n.e.dirs = append([]int{0}, n.e.dirs...)
	return 0
}

// placeCopy renames the finished copy tmp of the node into the writable
// branch, where it keeps the node's inode number.
func (n *node) placeCopy(tmp string, err error) syscall.Errno {
	dst := n.u.stack.Branches[0] + n.rel()
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	var st syscall.Stat_t
	if err == nil {
		err = syscall.Lstat(dst, &st)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fs.ToErrno(err)
	}
	n.e.branch, n.e.st = 0, st
	n.u.keep(&st, 0, n.rel(), n.StableAttr().Ino)
	return 0
}

// tempName returns an unused name in the work directory.
func (u *Union) tempName() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return u.workDir() + "/" + hex.EncodeToString(b), nil
}

// copyEntry copies the file src, described by st, to the new name dst
// (not its content when it is a directory). Without data a regular file's
// copy is empty; sync makes its data durable.
func copyEntry(src, dst string, st *syscall.Stat_t, data, sync bool) error {
	var err error
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		err = copyData(src, dst, data, sync)
	case syscall.S_IFDIR:
		err = syscall.Mkdir(dst, 0o700)
	case syscall.S_IFLNK:
		var target string
		if target, err = os.Readlink(src); err == nil {
			err = os.Symlink(target, dst)
		}
	default:
		err = syscall.Mknod(dst, st.Mode, int(st.Rdev))
	}
	if err != nil {
		return err
	}
	return copyMeta(src, dst, st)
}

// copyData copies a regular file's content, with data: a reflink where the
// file system shares blocks, else copy_file_range, which copies in the
// kernel. Without data, dst is made empty.
func copyData(src, dst string, data, sync bool) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil || !data {
		if out != nil {
			err = out.Close()
		}
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		out.Close()
		return err
	}
	defer in.Close()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) != nil {
		if err := copyRange(out, in); err != nil {
			out.Close()
			return err
		}
	}
	// The copy is renamed into place next: synced first, as kernel
	// overlayfs syncs its copy-ups, a crash can only leave the lower file
	// showing or the whole copy, never a copy the rename made visible
	// before its data reached the disk.
	if sync {
		if err := unix.Fdatasync(int(out.Fd())); err != nil {
			out.Close()
			return err
		}
	}
	return out.Close()
}

// copyChunk is how much copyRange asks copy_file_range for at a time.
const copyChunk = 8 << 20

// copyRange copies in to out in the kernel (copy_file_range). Where
// copy_file_range cannot copy between the two files, io.Copy does. The
// copy is not written out as it goes: starting each chunk's write-out at
// once made a copy-up of a file read from disk slower (0.92x without, in
// one A/B of bench/aufs.sh), the writes competing with the reads.
func copyRange(out, in *os.File) error {
	for off := int64(0); ; {
		n, err := unix.CopyFileRange(int(in.Fd()), nil, int(out.Fd()), nil, copyChunk, 0)
		if err != nil {
			if off == 0 && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				_, err = io.Copy(out, in)
			}
			return err
		}
		if n == 0 {
			return nil
		}
		off += int64(n)
	}
}

// copyMeta gives dst the owner, mode, xattrs and times of src: owner before
// mode, since chown clears set-user-ID bits. An owner or xattr the server
// may not set (it is not root, or the owner has no id in its user
// namespace) is left as the server's: vfs-like ownership.
func copyMeta(src, dst string, st *syscall.Stat_t) error {
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil && !notAllowed(err) {
		return err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
		if err := syscall.Chmod(dst, st.Mode&07777); err != nil {
			return err
		}
	}
	if err := copyXattrs(src, dst); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(syscall.TimespecToNsec(st.Atim)), unix.NsecToTimespec(syscall.TimespecToNsec(st.Mtim))}
	return unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func copyXattrs(src, dst string) error {
	size, err := unix.Llistxattr(src, nil)
	if err != nil || size == 0 {
		if errors.Is(err, syscall.ENOTSUP) {
			return nil
		}
		return err
	}
	names := make([]byte, size)
	if size, err = unix.Llistxattr(src, names); err != nil {
		return err
	}
	start := 0
	for i, c := range names[:size] {
		if c != 0 {
			continue
		}
		name := string(names[start:i])
		start = i + 1
		value := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(src, name, value)
		if err != nil {
			return err
		}
		if err := unix.Lsetxattr(dst, name, value[:m], 0); err != nil && !notAllowed(err) {
			return err
		}
	}
	return nil
}

func notAllowed(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL)
}
