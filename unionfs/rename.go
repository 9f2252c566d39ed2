package unionfs

import (
	"context"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// Rename moves name to newName in newParent. A directory that lower
// branches have part of is copied whole into the writable branch under its
// new name, opaque if lower branches have that name too (kernel overlayfs
// without redirect_dir answers EXDEV instead); a whiteout hides the old
// name.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np := newParent.(*node)
	if IsWhiteout(newName) {
		return syscall.EPERM
	}
	if flags&^unix.RENAME_NOREPLACE != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE and RENAME_WHITEOUT are not offered
	}
	return n.change(name, func() syscall.Errno {
		return n.rename(name, np, newName, flags&unix.RENAME_NOREPLACE != 0)
	})
}

func (n *node) rename(name string, np *node, newName string, noReplace bool) syscall.Errno {
	rel, newRel := n.rel()+"/"+name, np.rel()+"/"+newName
	if rel == newRel {
		return 0
	}
	src, err := n.u.stack.child(n.e.dirs, rel)
	if err != nil {
		return fs.ToErrno(err)
	}
	if src.branch < 0 {
		return syscall.ENOENT
	}
	dst, err := np.u.stack.child(np.e.dirs, newRel)
	if err != nil {
		return fs.ToErrno(err)
	}
	if dst.branch >= 0 {
		if errno := checkReplace(n.u, &src, &dst, newRel, noReplace); errno != 0 {
			return errno
		}
	}
	child := n.GetChild(name)
	if child == nil {
		return syscall.ENOENT // the kernel looks a name up before renaming it
	}
	srcNode := child.Operations().(*node)
	if errno := np.copyUpDir(); errno != 0 {
		return errno
	}
	if errno := n.copyUpDir(); errno != 0 {
		return errno
	}
	srcLower, err := n.lowerHas(name)
	if err != nil {
		return fs.ToErrno(err)
	}
	dstLower, err := np.lowerHas(newName)
	if err != nil {
		return fs.ToErrno(err)
	}
	from := n.upper(name)
	switch {
	case src.isDir() && (src.branch > 0 || len(src.dirs) > 1):
		// Part of the directory is below: build the whole of it.
		tmp, err := n.u.tempName()
		if err == nil {
			err = n.u.copyTree(&src, rel, tmp, dstLower)
		}
		if err == nil {
			err = syncFS(tmp) // the copies' data, before the rename shows them
		}
		if err != nil {
			os.RemoveAll(tmp)
			return fs.ToErrno(err)
		}
		from = tmp
	case src.isDir():
		if dstLower {
			if err := writeOpaque(from); err != nil {
				return fs.ToErrno(err)
			}
		}
	default:
		if errno := srcNode.copyUp(); errno != 0 {
			return errno
		}
	}
	to := np.upper(newName)
	if dst.branch == 0 && dst.isDir() {
		if err := os.RemoveAll(to); err != nil { // empty in the union: whiteouts only
			return fs.ToErrno(err)
		}
	}
	if err := os.Rename(from, to); err != nil {
		return fs.ToErrno(err)
	}
	if dst.branch == 0 && !dst.isDir() && dst.st.Nlink <= 1 {
		n.u.forget(&dst.st, 0, newRel)
	}
	if err := np.dropWhiteout(newName); err != nil {
		return fs.ToErrno(err)
	}
	if srcLower {
		if err := n.whiteout(name); err != nil {
			return fs.ToErrno(err)
		}
	}
	if from != n.upper(name) { // the copied directory: drop what was above
		if err := os.RemoveAll(n.upper(name)); err != nil {
			return fs.ToErrno(err)
		}
	}
	if errno := n.u.refresh(srcNode, np.e.dirs, newRel); errno != 0 {
		return errno
	}
	return 0
}

// checkReplace says whether src may replace the existing dst, as rename(2)
// would: a directory only an empty directory, a file only a file.
func checkReplace(u *Union, src, dst *entry, newRel string, noReplace bool) syscall.Errno {
	if noReplace {
		return syscall.EEXIST
	}
	switch {
	case src.isDir() && !dst.isDir():
		return syscall.ENOTDIR
	case !src.isDir() && dst.isDir():
		return syscall.EISDIR
	case dst.isDir():
		list, err := u.stack.list(dst.dirs, newRel)
		if err != nil {
			return fs.ToErrno(err)
		}
		if len(list) > 0 {
			return syscall.ENOTEMPTY
		}
	}
	return 0
}

// copyTree copies the directory e at rel, as the union shows it, to the new
// name dst on the writable branch's file system; opaque when it is to hide
// what lower branches have at its destination.
func (u *Union) copyTree(e *entry, rel, dst string, opaque bool) error {
	if err := syscall.Mkdir(dst, 0o700); err != nil {
		return err
	}
	if opaque {
		if err := writeOpaque(dst); err != nil {
			return err
		}
	}
	if err := u.copyChildren(e, rel, dst, map[[2]uint64]string{}); err != nil {
		return err
	}
	return copyMeta(u.stack.Branches[e.branch]+rel, dst, &e.st)
}

// copyChildren copies the content of directory e; files linked more than
// once in it stay linked (links maps a copied file's device and inode to
// its copy).
func (u *Union) copyChildren(e *entry, rel, dst string, links map[[2]uint64]string) error {
	list, err := u.stack.list(e.dirs, rel)
	if err != nil {
		return err
	}
	for _, l := range list {
		crel := rel + "/" + l.name
		c, err := u.stack.child(e.dirs, crel)
		if err != nil {
			return err
		}
		src := u.stack.Branches[c.branch] + crel
		id := [2]uint64{c.st.Dev, c.st.Ino}
		if first, ok := links[id]; ok {
			if err := os.Link(first, dst+"/"+l.name); err != nil {
				return err
			}
			continue
		}
		if err := copyEntry(src, dst+"/"+l.name, &c.st, true, false); err != nil { // synced at once after
			return err
		}
		if c.st.Nlink > 1 && !c.isDir() {
			links[id] = dst + "/" + l.name
		}
		if c.isDir() {
			if err := u.copyChildren(&c, crel, dst+"/"+l.name, links); err != nil {
				return err
			}
			if err := copyMeta(src, dst+"/"+l.name, &c.st); err != nil { // times, after the content
				return err
			}
		}
	}
	return nil
}

// refresh resolves the node, now at rel in a directory merged from dirs,
// and the children the kernel knows of it, keeping their inode numbers.
func (u *Union) refresh(n *node, dirs []int, rel string) syscall.Errno {
	e, err := u.stack.child(dirs, rel)
	if err != nil {
		return fs.ToErrno(err)
	}
	if e.branch < 0 {
		return syscall.ENOENT
	}
	n.e = e
	u.keep(&e.st, e.branch, rel, n.StableAttr().Ino)
	if !e.isDir() {
		return 0
	}
	for name, child := range n.Children() {
		if c, ok := child.Operations().(*node); ok {
			if errno := u.refresh(c, e.dirs, rel+"/"+name); errno != 0 && errno != syscall.ENOENT {
				return errno
			}
		}
	}
	return 0
}

// syncFS makes durable everything written to the file system of p.
func syncFS(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
