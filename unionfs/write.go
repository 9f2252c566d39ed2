package unionfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var (
	_ fs.NodeCreater       = (*node)(nil)
	_ fs.NodeMkdirer       = (*node)(nil)
	_ fs.NodeMknoder       = (*node)(nil)
	_ fs.NodeSymlinker     = (*node)(nil)
	_ fs.NodeLinker        = (*node)(nil)
	_ fs.NodeUnlinker      = (*node)(nil)
	_ fs.NodeRmdirer       = (*node)(nil)
	_ fs.NodeRenamer       = (*node)(nil)
	_ fs.NodeSetattrer     = (*node)(nil)
	_ fs.NodeSetxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer = (*node)(nil)
)

// change runs fn with the union locked for a change, after the checks
// every change of a directory entry needs.
func (n *node) change(name string, fn func() syscall.Errno) syscall.Errno {
	if !n.u.writable {
		return syscall.EROFS
	}
	if IsWhiteout(name) {
		return syscall.EPERM
	}
	n.u.mu.Lock()
	defer n.u.mu.Unlock()
	return fn()
}

// upper returns the path of name in the writable branch, in this directory.
func (n *node) upper(name string) string { return n.u.stack.Branches[0] + n.rel() + "/" + name }

// lowerHas reports whether a branch below the top one shows name in this
// directory: removing or replacing it then needs a whiteout.
func (n *node) lowerHas(name string) (bool, error) {
	var below []int
	for _, b := range n.e.dirs {
		if b > 0 {
			below = append(below, b)
		}
	}
	if len(below) == 0 {
		return false, nil
	}
	e, err := n.u.stack.child(below, n.rel()+"/"+name)
	if errors.Is(err, syscall.ENOENT) {
		return false, nil
	}
	return e.branch >= 0, err
}

// created finishes a new entry name of this directory, made in place in
// the writable branch: it gets the caller as owner and replaces the
// whiteout it may have been made over.
func (n *node) created(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	p := n.upper(name)
	if err := n.u.own(ctx, p, n.upper("")); err != nil {
		os.Remove(p)
		return nil, fs.ToErrno(err)
	}
	if err := n.dropWhiteout(name); err != nil {
		return nil, fs.ToErrno(err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, fs.ToErrno(err)
	}
	rel := n.rel() + "/" + name
	e := entry{branch: 0, st: st}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		e.dirs = []int{0}
	}
	return n.newChild(ctx, rel, e, out), 0
}

// own gives the caller the new file at p, whose directory in the union is
// parent, as a local file system would: the group of a set-group-ID
// parent, which a new directory inherits the bit of. A server that is not
// the host's root leaves files its own (vfs-like ownership).
func (u *Union) own(ctx context.Context, p, parent string) error {
	caller, ok := fuse.FromContext(ctx)
	if !ok || !u.asRoot {
		return nil
	}
	if caller.Uid == 0 && caller.Gid == 0 && filepath.Dir(p) == filepath.Clean(parent) {
		return nil // made in place by root already, as the kernel would have
	}
	var st syscall.Stat_t
	if err := syscall.Stat(parent, &st); err != nil {
		return err
	}
	if st.Mode&syscall.S_ISGID == 0 {
		return os.Lchown(p, int(caller.Uid), int(caller.Gid))
	}
	if err := os.Lchown(p, int(caller.Uid), int(st.Gid)); err != nil {
		return err
	}
	var self syscall.Stat_t
	if err := syscall.Lstat(p, &self); err != nil || self.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return err
	}
	return syscall.Chmod(p, self.Mode&07777|syscall.S_ISGID)
}

// dropWhiteout removes the whiteout of name in this directory's writable
// branch, if there is one.
func (n *node) dropWhiteout(name string) error {
	err := os.Remove(n.upper(whiteoutPrefix + name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// whiteout hides name of the lower branches in this directory.
func (n *node) whiteout(name string) error {
	f, err := os.OpenFile(n.upper(whiteoutPrefix+name), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (inode *fs.Inode, fh fs.FileHandle, fuseFlags uint32, errno syscall.Errno) {
	errno = n.change(name, func() syscall.Errno {
		if errno := n.copyUpDir(); errno != 0 {
			return errno
		}
		flags &^= syscall.O_NOCTTY
		fd, err := syscall.Open(n.upper(name), int(flags)|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, mode)
		if err != nil {
			return fs.ToErrno(err)
		}
		if inode, errno = n.created(ctx, name, out); errno != 0 {
			syscall.Close(fd)
			return errno
		}
		fh = inode.Operations().(*node).newHandle(fd, false)
		return 0
	})
	return inode, fh, 0, errno
}

func (n *node) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (inode *fs.Inode, errno syscall.Errno) {
	errno = n.change(name, func() syscall.Errno {
		if errno := n.copyUpDir(); errno != 0 {
			return errno
		}
		if err := syscall.Mknod(n.upper(name), mode, int(dev)); err != nil {
			return fs.ToErrno(err)
		}
		inode, errno = n.created(ctx, name, out)
		return errno
	})
	return inode, errno
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (inode *fs.Inode, errno syscall.Errno) {
	errno = n.change(name, func() syscall.Errno {
		if errno := n.copyUpDir(); errno != 0 {
			return errno
		}
		if err := os.Symlink(target, n.upper(name)); err != nil {
			return fs.ToErrno(err)
		}
		inode, errno = n.created(ctx, name, out)
		return errno
	})
	return inode, errno
}

// Mkdir builds the directory in the work directory and renames it into
// place; over a whiteout it is opaque, so what the lower branches had under
// that name stays hidden.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (inode *fs.Inode, errno syscall.Errno) {
	errno = n.change(name, func() syscall.Errno {
		if errno := n.copyUpDir(); errno != 0 {
			return errno
		}
		hides, err := n.lowerHas(name)
		if err == nil && !hides {
			hides = exists(n.upper(whiteoutPrefix + name))
		}
		if err != nil {
			return fs.ToErrno(err)
		}
		tmp, err := n.u.tempName()
		if err != nil {
			return fs.ToErrno(err)
		}
		if err := syscall.Mkdir(tmp, mode); err != nil {
			return fs.ToErrno(err)
		}
		if err := n.u.own(ctx, tmp, n.upper("")); err == nil && hides {
			err = writeOpaque(tmp)
		}
		if err == nil {
			err = os.Rename(tmp, n.upper(name))
		}
		if err != nil {
			os.RemoveAll(tmp)
			return fs.ToErrno(err)
		}
		inode, errno = n.created(ctx, name, out)
		return errno
	})
	return inode, errno
}

// writeOpaque makes dir opaque.
func writeOpaque(dir string) error {
	f, err := os.OpenFile(dir+"/"+OpaqueMarker, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (inode *fs.Inode, errno syscall.Errno) {
	errno = n.change(name, func() syscall.Errno {
		t := target.(*node)
		if errno := t.copyUp(); errno != 0 {
			return errno
		}
		if errno := n.copyUpDir(); errno != 0 {
			return errno
		}
		if err := os.Link(t.full(), n.upper(name)); err != nil {
			return fs.ToErrno(err)
		}
		if err := n.dropWhiteout(name); err != nil {
			return fs.ToErrno(err)
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(n.upper(name), &st); err != nil {
			return fs.ToErrno(err)
		}
		n.u.keep(&st, 0, "", t.StableAttr().Ino)
		inode = n.newChild(ctx, n.rel()+"/"+name, entry{branch: 0, st: st}, out)
		return 0
	})
	return inode, errno
}

// remove deletes name from this directory: its copy in the writable branch
// goes, and a whiteout hides the lower branches' one. The whiteout comes
// first, so a crash in between shows the name or nothing, never an older
// version.
func (n *node) remove(name string, dir bool) syscall.Errno {
	rel := n.rel() + "/" + name
	e, err := n.u.stack.child(n.e.dirs, rel)
	if err != nil {
		return fs.ToErrno(err)
	}
	switch {
	case e.branch < 0:
		return syscall.ENOENT
	case dir && !e.isDir():
		return syscall.ENOTDIR
	case !dir && e.isDir():
		return syscall.EISDIR
	}
	if dir {
		list, err := n.u.stack.list(e.dirs, rel)
		if err != nil {
			return fs.ToErrno(err)
		}
		if len(list) > 0 {
			return syscall.ENOTEMPTY
		}
	}
	hides, err := n.lowerHas(name)
	if err != nil {
		return fs.ToErrno(err)
	}
	if hides {
		if errno := n.copyUpDir(); errno != 0 {
			return errno
		}
		if err := n.whiteout(name); err != nil {
			return fs.ToErrno(err)
		}
	}
	if e.branch == 0 {
		if dir {
			err = os.RemoveAll(n.upper(name)) // holds whiteouts only
		} else {
			err = syscall.Unlink(n.upper(name))
		}
		if err != nil {
			return fs.ToErrno(err)
		}
		if e.st.Nlink <= 1 || dir {
			n.u.forget(&e.st, 0, rel)
		}
	}
	return 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.change(name, func() syscall.Errno { return n.remove(name, false) })
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.change(name, func() syscall.Errno { return n.remove(name, true) })
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if !n.u.writable {
		return syscall.EROFS
	}
	n.u.mu.Lock()
	defer n.u.mu.Unlock()
	if errno := n.copyUp(); errno != 0 {
		return errno
	}
	p := n.full()
	if mode, ok := in.GetMode(); ok {
		if err := syscall.Chmod(p, mode); err != nil {
			return fs.ToErrno(err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		if err := os.Lchown(p, u, g); err != nil {
			return fs.ToErrno(err)
		}
	}
	if size, ok := in.GetSize(); ok {
		var err error
		if h, isHandle := f.(*handle); isHandle && !h.lower {
			fd, _ := h.LoopbackFile.PassthroughFd() // its descriptor, whatever the mode
			err = syscall.Ftruncate(fd, int64(size))
		} else {
			err = syscall.Truncate(p, int64(size))
		}
		if err != nil {
			return fs.ToErrno(err)
		}
	}
	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if mok || aok {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if aok {
			ts[0] = unix.NsecToTimespec(atime.UnixNano())
		}
		if mok {
			ts[1] = unix.NsecToTimespec(mtime.UnixNano())
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fs.ToErrno(err)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return fs.ToErrno(err)
	}
	// The kernel takes the reply as the inode's new attributes, its
	// number included; cached, they spare the GETATTR it would send next.
	out.FromStat(&st)
	out.Ino = n.StableAttr().Ino
	out.SetTimeout(cacheTimeout)
	return 0
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return n.changeAttr(func(p string) error { return unix.Lsetxattr(p, attr, data, int(flags)) })
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return n.changeAttr(func(p string) error { return unix.Lremovexattr(p, attr) })
}

// changeAttr copies the node up and runs fn on its writable copy.
func (n *node) changeAttr(fn func(p string) error) syscall.Errno {
	if !n.u.writable {
		return syscall.EROFS
	}
	n.u.mu.Lock()
	defer n.u.mu.Unlock()
	if errno := n.copyUp(); errno != 0 {
		return errno
	}
	return fs.ToErrno(fn(n.full()))
}
