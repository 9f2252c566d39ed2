package vfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// copyMethod is the fastest way of copying file content found to work so
// far; it only ever falls back, once per failure kind, for the whole driver.
type copyMethod int

const (
	copyReflink copyMethod = iota // ioctl FICLONE: shares the blocks
	copyRange                     // copy_file_range: in-kernel copy
	copyReadWrite
)

// copier copies a tree preserving everything a layer can hold: owners,
// modes, xattrs, nanosecond times, hard links, symlinks, devices and fifos.
type copier struct {
	method *copyMethod
	links  map[inode]string // first copy of each multiply-linked inode
	dirs   []dirTimes       // directory times, set once their content is done
}

type inode struct{ dev, ino uint64 }

type dirTimes struct {
	path string
	st   unix.Stat_t
}

// copyTree creates dst as a copy of the directory src.
func copyTree(src, dst string, method *copyMethod) error {
	c := &copier{method: method, links: map[inode]string{}}
	if err := c.copy(src, dst); err != nil {
		return err
	}
	// Deepest first, though any order works: only entries change a dir's mtime.
	for i := len(c.dirs) - 1; i >= 0; i-- {
		if err := setTimes(c.dirs[i].path, &c.dirs[i].st); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) copy(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: src, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
		key := inode{st.Dev, st.Ino}
		if first, ok := c.links[key]; ok {
			return os.Link(first, dst)
		}
		c.links[key] = dst
	}

	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
		entries, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := c.copy(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
		c.dirs = append(c.dirs, dirTimes{dst, st})
	case unix.S_IFREG:
		if err := c.copyFile(src, dst); err != nil {
			return err
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
		if err := unix.Mknod(dst, st.Mode, int(st.Rdev)); err != nil {
			return &os.PathError{Op: "mknod", Path: dst, Err: err}
		}
	default:
		return fmt.Errorf("copy %s: unknown file type %#o", src, st.Mode&unix.S_IFMT)
	}
	return copyMetadata(src, dst, &st)
}

// copyMetadata copies owner, then mode (chown clears setuid), then xattrs
// (chown clears security.capability), then times for all but directories.
func copyMetadata(src, dst string, st *unix.Stat_t) error {
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return &os.PathError{Op: "lchown", Path: dst, Err: err}
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if !isLink {
		if err := unix.Chmod(dst, st.Mode&07777); err != nil {
			return &os.PathError{Op: "chmod", Path: dst, Err: err}
		}
	}
	if err := copyXattrs(src, dst); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil
	}
	return setTimes(dst, st)
}

func setTimes(path string, st *unix.Stat_t) error {
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimensat", Path: path, Err: err}
	}
	return nil
}

func copyXattrs(src, dst string) error {
	names, err := listXattrs(src)
	if err != nil {
		return err
	}
	for _, name := range names {
		value, err := getXattr(src, name)
		if err != nil {
			return err
		}
		if err := unix.Lsetxattr(dst, name, value, 0); err != nil {
			return &os.PathError{Op: "lsetxattr " + name, Path: dst, Err: err}
		}
	}
	return nil
}

func listXattrs(path string) ([]string, error) {
	size, err := unix.Llistxattr(path, nil)
	if errors.Is(err, unix.ENOTSUP) || size == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, &os.PathError{Op: "llistxattr", Path: path, Err: err}
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(path, buf)
	if err != nil {
		return nil, &os.PathError{Op: "llistxattr", Path: path, Err: err}
	}
	return splitNul(buf[:size]), nil
}

func splitNul(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}

func getXattr(path, name string) ([]byte, error) {
	size, err := unix.Lgetxattr(path, name, nil)
	if err != nil {
		return nil, &os.PathError{Op: "lgetxattr " + name, Path: path, Err: err}
	}
	buf := make([]byte, size)
	size, err = unix.Lgetxattr(path, name, buf)
	if err != nil {
		return nil, &os.PathError{Op: "lgetxattr " + name, Path: path, Err: err}
	}
	return buf[:size], nil
}

// copyFile copies the content of src into a new file dst.
func (c *copier) copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := c.copyContent(in, out); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

func (c *copier) copyContent(in, out *os.File) error {
	if *c.method == copyReflink {
		err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return err
		}
		*c.method = copyRange
	}
	if *c.method == copyRange {
		done, err := copyFileRange(in, out)
		if err == nil {
			return nil
		}
		if !unsupported(err) || done > 0 {
			return err
		}
		*c.method = copyReadWrite
	}
	_, err := io.Copy(out, in)
	return err
}

// copyFileRange copies all of in to out in the kernel and returns how many
// bytes it copied, so a failure after progress is not retried another way.
func copyFileRange(in, out *os.File) (int64, error) {
	var done int64
	for {
		n, err := unix.CopyFileRange(int(in.Fd()), nil, int(out.Fd()), nil, 1<<30, 0)
		if err != nil {
			return done, err
		}
		if n == 0 {
			return done, nil
		}
		done += int64(n)
	}
}

// unsupported reports whether err means the copy method does not work
// between these files, as opposed to the copy failing.
func unsupported(err error) bool {
	return errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) ||
		errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EBADF)
}
