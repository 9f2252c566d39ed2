package unionfs

import (
	"context"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is one file of the union. Its entry says which branch holds it
// (and, for a directory, which branches merge into it); it is read under
// the union's lock shared and changed under it alone.
type node struct {
	fs.Inode
	u *Union
	e entry
	// lowerOpens counts open files on a lower branch's copy: with
	// passthrough the kernel ties an inode to one backing file while any
	// is open, so the copied-up file cannot be opened until they close.
	lowerOpens atomic.Int32
}

var (
	_ fs.NodeLookuper    = (*node)(nil)
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeReaddirer   = (*node)(nil)
	_ fs.NodeReadlinker  = (*node)(nil)
	_ fs.NodeOpener      = (*node)(nil)
	_ fs.NodeGetxattrer  = (*node)(nil)
	_ fs.NodeListxattrer = (*node)(nil)
	_ fs.NodeStatfser    = (*node)(nil)
	_ fs.NodeFlusher     = (*node)(nil)
)

// rel returns the node's path in the union: "" for the root, else "/a/b".
func (n *node) rel() string {
	if p := n.Path(nil); p != "" {
		return "/" + p
	}
	return ""
}

// full returns the path of the node's branch file.
func (n *node) full() string { return n.u.stack.Branches[n.e.branch] + n.rel() }

// up returns the node's parent directory; nil for the root.
func (n *node) up() *node {
	_, p := n.Parent()
	if p == nil {
		return nil
	}
	return p.Operations().(*node)
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if IsWhiteout(name) {
		return nil, syscall.ENOENT
	}
	n.u.mu.RLock()
	defer n.u.mu.RUnlock()
	rel := n.rel() + "/" + name
	e, err := n.u.stack.child(n.e.dirs, rel)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	if e.branch < 0 {
		return nil, syscall.ENOENT
	}
	return n.newChild(ctx, rel, e, out), 0
}

// newChild returns the inode of the entry e found at rel. A number the
// kernel already knows (a hard link, a name looked up again) gives the
// inode it has.
func (n *node) newChild(ctx context.Context, rel string, e entry, out *fuse.EntryOut) *fs.Inode {
	ino := n.u.ino(&e.st, e.branch, rel)
	child := n.NewInode(ctx, &node{u: n.u, e: e}, fs.StableAttr{Mode: e.st.Mode & syscall.S_IFMT, Ino: ino})
	out.Attr.FromStat(&e.st)
	out.Attr.Ino = ino
	return child
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*handle); ok && !h.lower {
		return h.Getattr(ctx, out)
	}
	n.u.mu.RLock()
	defer n.u.mu.RUnlock()
	var st syscall.Stat_t
	if err := syscall.Lstat(n.full(), &st); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStat(&st)
	return 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	n.u.mu.RLock()
	defer n.u.mu.RUnlock()
	target, err := os.Readlink(n.full())
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return []byte(target), 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	n.u.mu.RLock()
	defer n.u.mu.RUnlock()
	rel := n.rel()
	list, err := n.u.stack.list(n.e.dirs, rel)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	entries := make([]fuse.DirEntry, 0, len(list))
	for _, l := range list {
		var st syscall.Stat_t
		if err := syscall.Lstat(n.u.stack.Branches[l.branch]+rel+"/"+l.name, &st); err != nil {
			return nil, fs.ToErrno(err)
		}
		entries = append(entries, fuse.DirEntry{
			Name: l.name,
			Mode: st.Mode & syscall.S_IFMT,
			Ino:  n.u.ino(&st, l.branch, rel+"/"+l.name),
		})
	}
	return fs.NewListDirStream(entries), 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	n.u.mu.RLock()
	defer n.u.mu.RUnlock()
	size, err := unix.Lgetxattr(n.full(), attr, dest)
	return uint32(size), fs.ToErrno(err)
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	n.u.mu.RLock()
	defer n.u.mu.RUnlock()
	size, err := unix.Llistxattr(n.full(), dest)
	return uint32(size), fs.ToErrno(err)
}

// Statfs reports the file system of the top branch, where writes go.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := syscall.Statfs(n.u.stack.Branches[0], &st); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStatfsT(&st)
	return 0
}

// Open opens the branch file, copying it up first for writing.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	write := flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0
	if write {
		if !n.u.writable {
			return nil, 0, syscall.EROFS
		}
		// The copy can be opened once the files open on the lower copy
		// are released: wait for them before taking the union's lock,
		// rather than hold up every lookup meanwhile.
		if n.u.passthrough && !n.lowerClosed() {
			return nil, 0, syscall.ETXTBSY
		}
		n.u.mu.Lock()
		defer n.u.mu.Unlock()
		if errno := n.copyUpAs(flags&syscall.O_TRUNC == 0); errno != 0 {
			return nil, 0, errno
		}
	} else {
		n.u.mu.RLock()
		defer n.u.mu.RUnlock()
	}
	lower := n.e.branch > 0 || !n.u.writable
	if !lower && n.u.passthrough && !n.lowerClosed() {
		return nil, 0, syscall.ETXTBSY
	}
	flags &^= syscall.O_CREAT | syscall.O_EXCL | syscall.O_NOCTTY
	fd, err := syscall.Open(n.full(), int(flags)|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fs.ToErrno(err)
	}
	return n.newHandle(fd, lower), 0, 0
}

// releaseWait bounds how long an open of the upper copy waits for the files
// open on the lower copy to be released. The kernel passes an inode through
// to one backing file at a time, and fails with EIO any other open of it
// meanwhile (fs/fuse/iomode.c), so the upper copy can be opened only once
// they are. The kernel lets go of the lower file when its last descriptor
// closes, but tells the server with a RELEASE sent in the background: a
// program that closes a file and opens it for writing gets here first. A
// FLUSH would tell no sooner: it comes with every close of a descriptor,
// not only the last.
const releaseWait = 100 * time.Millisecond

// lowerClosed reports whether no file is open on the node's lower copy,
// waiting up to releaseWait for the releases on their way.
func (n *node) lowerClosed() bool {
	for deadline := time.Now().Add(releaseWait); n.lowerOpens.Load() > 0; {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// handle is an open file of the union: a file of a branch.
type handle struct {
	*fs.LoopbackFile
	n     *node
	lower bool
}

func (n *node) newHandle(fd int, lower bool) *handle {
	if lower {
		n.lowerOpens.Add(1)
	}
	return &handle{LoopbackFile: fs.NewLoopbackFile(fd).(*fs.LoopbackFile), n: n, lower: lower}
}

// PassthroughFd hands the kernel the branch file, unless passthrough is off.
func (h *handle) PassthroughFd() (int, bool) {
	if !h.n.u.passthrough {
		return 0, false
	}
	return h.LoopbackFile.PassthroughFd()
}

// Read serves a read the kernel did not pass through.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.n.u.served.Add(1)
	return h.LoopbackFile.Read(ctx, dest, off)
}

// Flush answers ENOSYS, after which the kernel sends no more FLUSH
// requests, one round trip fewer per close: the branches are local file
// systems whose close reports nothing that fsync would not, and the kernel
// keeps file locks itself (they are not forwarded to the server). Opening
// files with FOPEN_NOFLUSH would spare even the first FLUSH, but also the
// write-back the kernel does at each close before it sends one: without
// passthrough, pages written through a shared mapping would then reach the
// branch only when the kernel writes them back, after a diff of the layer
// may have read it.
func (n *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return syscall.ENOSYS }

// Release closes the branch file, then counts the lower copy closed: go-fuse
// lets go of its backing id only after Release returns, and an open of the
// upper copy in between would be handed the lower file, so the count comes
// last, to keep that window as narrow as can be.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	errno := h.LoopbackFile.Release(ctx)
	if h.lower {
		h.n.lowerOpens.Add(-1)
	}
	return errno
}
