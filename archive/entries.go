package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// paxXattr prefixes the PAX records that carry extended attributes.
const paxXattr = "SCHILY.xattr."

// regular writes a file of the layer; the directory it is in has been resolved.
func (a *applier) regular(p string, hdr *tar.Header, r io.Reader) error {
	if err := a.claim(p, markedFile); err != nil {
		return err
	}
	full := a.full(p)
	if hdr.Size <= smallFile {
		data := make([]byte, hdr.Size)
		if _, err := io.ReadFull(r, data); err != nil {
			return streamErr(err)
		}
		a.size += hdr.Size
		return a.files.write(full, hdr, data)
	}
	n, err := a.writeFile(full, hdr, r, a.buf)
	a.size += n
	return err
}

// writeFile creates the file full with the content of r and the metadata of
// hdr. It is safe for concurrent use on distinct paths.
func (a *applier) writeFile(full string, hdr *tar.Header, r io.Reader, buf []byte) (int64, error) {
	var fd int
	err := replace(full, false, func() (err error) {
		fd, err = unix.Open(full, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode(hdr)&0o777)
		return os.NewSyscallError("open", err)
	})
	if err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(fdWriter(fd), r, buf)
	if err != nil {
		unix.Close(fd)
		return n, streamErr(err)
	}
	err = a.fileMeta(fd, hdr)
	if err == nil {
		err = a.setXattrs(hdr, func(name string, value []byte) error {
			return unix.Fsetxattr(fd, name, value, 0)
		})
	}
	if err == nil {
		err = futimens(fd, hdr)
	}
	if cerr := unix.Close(fd); err == nil {
		err = os.NewSyscallError("close", cerr)
	}
	return n, err
}

// fileMeta gives the new open file fd the owner and mode of hdr. Most files
// already have them from the open (a root applier's own files, a mode the
// umask left alone), and a chown or chmod costs a journaled inode update
// even when it changes nothing, so fstat says which are needed.
func (a *applier) fileMeta(fd int, hdr *tar.Header) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return os.NewSyscallError("fstat", err)
	}
	chown := int(st.Uid) != hdr.Uid || int(st.Gid) != hdr.Gid
	if chown {
		if err := a.chown(unix.Fchown(fd, hdr.Uid, hdr.Gid)); err != nil {
			return err
		}
	}
	// chown clears setuid bits and file capabilities: mode and xattrs follow it.
	if chown || st.Mode&0o7777 != mode(hdr) {
		return os.NewSyscallError("fchmod", unix.Fchmod(fd, mode(hdr)))
	}
	return nil
}

// futimens sets the times of hdr on an open file: utimensat with a NULL
// path, which saves the path walk of setTimes.
func futimens(fd int, hdr *tar.Header) error {
	ts := timespecs(hdr)
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return os.NewSyscallError("futimens", errno)
	}
	return nil
}

// fdReader reads a file descriptor without the poller, whose registration
// costs an os.File a few syscalls per open: a layer of small files is
// mostly opens.
type fdReader int

func (r fdReader) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// fdWriter writes to a file descriptor without the poller and the
// ReadFrom fast paths of os.File, which would bypass the copy buffer.
type fdWriter int

func (w fdWriter) Write(b []byte) (int, error) {
	written := 0
	for written < len(b) {
		n, err := unix.Write(int(w), b[written:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return written, os.NewSyscallError("write", err)
		}
		written += n
	}
	return written, nil
}

// dir creates a directory, or gives an existing one the metadata of hdr.
func (a *applier) dir(p string, hdr *tar.Header) error {
	if err := a.claim(p, markedDir); err != nil {
		return err
	}
	full := a.full(p)
	err := replace(full, true, func() error {
		return os.NewSyscallError("mkdir", unix.Mkdir(full, 0o700))
	})
	if err == nil {
		err = a.pathMeta(full, hdr, true)
	}
	if err != nil {
		return err
	}
	a.dirTimes = append(a.dirTimes, dirTime{full, timespecs(hdr)})
	return nil
}

// symlink creates a symlink; its target may point anywhere: Apply never
// follows the last component of a name.
func (a *applier) symlink(p string, hdr *tar.Header) error {
	if err := a.claim(p, markedFile); err != nil {
		return err
	}
	full := a.full(p)
	err := replace(full, false, func() error {
		return os.NewSyscallError("symlink", unix.Symlink(hdr.Linkname, full))
	})
	if err == nil {
		err = a.pathMeta(full, hdr, false)
	}
	if err == nil {
		a.size += int64(len(hdr.Linkname)) // its lstat size, which Docker counts
	}
	if err != nil {
		return err
	}
	return setTimes(full, hdr)
}

// hardlink links p to an earlier entry of the same tar: the link keeps the
// metadata the target already has.
func (a *applier) hardlink(p string, hdr *tar.Header) error {
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
	}
	if isAUFSMeta(target) {
		return nil
	}
	tdir, ok := a.dirs[path.Dir(target)]
	tp := join(tdir, path.Base(target))
	if !ok || a.written[tp] != markedFile {
		return invalid("hard link target %q is not an earlier file of the layer", hdr.Linkname)
	}
	if err := a.files.wait(); err != nil { // the target may still be being written
		return err
	}
	if err := a.claim(p, markedFile); err != nil {
		return err
	}
	full := a.full(p)
	return replace(full, false, func() error {
		return os.NewSyscallError("link", unix.Linkat(unix.AT_FDCWD, a.full(tp), unix.AT_FDCWD, full, 0))
	})
}

// node makes a device or a fifo. Where device nodes are not allowed (a user
// namespace) they are skipped, as every container engine does.
func (a *applier) node(p string, hdr *tar.Header) error {
	if err := a.claim(p, markedFile); err != nil {
		return err
	}
	kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	full := a.full(p)
	err := replace(full, false, func() error {
		return os.NewSyscallError("mknod", unix.Mknod(full, kind|mode(hdr), int(dev)))
	})
	if errors.Is(err, unix.EPERM) && kind != unix.S_IFIFO {
		return nil
	}
	if err == nil {
		err = a.pathMeta(full, hdr, true)
	}
	if err != nil {
		return err
	}
	return setTimes(full, hdr)
}

// whiteout applies the whiteout entry base found in the directory dir.
func (a *applier) whiteout(dir, base string, hdr *tar.Header) error {
	// What a whiteout removes is on disk only once the writers are done.
	if err := a.files.wait(); err != nil {
		return err
	}
	// Deleting needs no directory: what is not there is deleted already.
	parent, err := a.resolveDir(dir, a.format == WhiteoutOverlay)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if base == opaqueMarker {
		if a.format == WhiteoutOverlay {
			err := unix.Lsetxattr(a.full(parent), overlayOpaqueXattr, []byte("y"), 0)
			return os.NewSyscallError("setxattr "+overlayOpaqueXattr, err)
		}
		return a.purge(parent)
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return invalid("whiteout %q names no file", base)
	}
	p := join(parent, victim)
	if err := a.claim(p, markedWhiteout); err != nil {
		return err
	}
	full := a.full(p)
	if a.format == WhiteoutDelete {
		return os.RemoveAll(full)
	}
	err = replace(full, false, func() error {
		return os.NewSyscallError("mknod", unix.Mknod(full, unix.S_IFCHR, 0))
	})
	if err == nil {
		err = a.chown(unix.Lchown(full, hdr.Uid, hdr.Gid))
	}
	if err != nil {
		return err
	}
	return setTimes(full, hdr)
}

// purge removes from the directory p everything this layer did not write:
// what an opaque whiteout hides when whiteouts are deletions.
func (a *applier) purge(p string) error {
	entries, err := os.ReadDir(a.full(p))
	if err != nil {
		return err
	}
	for _, e := range entries {
		child := join(p, e.Name())
		switch a.written[child] {
		case unmarked:
			err = os.RemoveAll(a.full(child))
		case markedParent, markedDir:
			err = a.purge(child)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// pathMeta sets owner, mode (unless the path is a symlink) and xattrs by path.
func (a *applier) pathMeta(full string, hdr *tar.Header, chmod bool) error {
	if err := a.chown(unix.Lchown(full, hdr.Uid, hdr.Gid)); err != nil {
		return err
	}
	if chmod {
		if err := unix.Chmod(full, mode(hdr)); err != nil {
			return os.NewSyscallError("chmod", err)
		}
	}
	return a.setXattrs(hdr, func(name string, value []byte) error {
		return unix.Lsetxattr(full, name, value, 0)
	})
}

// chown passes on the error of a chown, except the refusal an unprivileged
// user gets: such a user keeps the files as its own.
func (a *applier) chown(err error) error {
	if err == nil || (!a.isRoot && errors.Is(err, unix.EPERM)) {
		return nil
	}
	return os.NewSyscallError("chown", err)
}

// setXattrs sets the xattrs of hdr with set. The overlay namespace is never
// taken from a tar: it steers the kernel, it is not image content.
func (a *applier) setXattrs(hdr *tar.Header, set func(name string, value []byte) error) error {
	for key, value := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(key, paxXattr)
		if !ok || strings.HasPrefix(name, overlayXattrPrefix) {
			continue
		}
		err := set(name, []byte(value))
		if err != nil && !a.isRoot && privilegedXattr(name) && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOTSUP)) {
			continue
		}
		if err != nil {
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	return nil
}

func privilegedXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.") || strings.HasPrefix(name, "security.")
}

func mode(hdr *tar.Header) uint32 { return uint32(hdr.Mode) & 0o7777 }

// timespecs returns the atime and mtime of hdr; a tar without atime gets the mtime.
func timespecs(hdr *tar.Header) [2]unix.Timespec {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	return [2]unix.Timespec{
		{Sec: atime.Unix(), Nsec: int64(atime.Nanosecond())},
		{Sec: hdr.ModTime.Unix(), Nsec: int64(hdr.ModTime.Nanosecond())},
	}
}

func setTimes(full string, hdr *tar.Header) error {
	ts := timespecs(hdr)
	err := unix.UtimesNanoAt(unix.AT_FDCWD, full, ts[:], unix.AT_SYMLINK_NOFOLLOW)
	return os.NewSyscallError("utimensat", err)
}
