package server

import (
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/thinp"
)

// maxWrite is the largest FUSE request, the most the kernel allows
// (fuse.max_pages_limit, 256 pages). A request costs the server a read of
// /dev/fuse, a goroutine, a reply and, for new data blocks, an extent
// conversion in the data file: the loop device's 1 MiB writes (see
// attachLoop) in one request each take a fifth less of the server's CPU
// than in two of 512 KiB. Reads reply from memory (no splice), so they are
// not limited by a pipe's size.
const maxWrite = 1 << 20

// devFS is the FUSE file system of the active devices: a flat directory of
// files named by device id, added on activation and removed on
// deactivation.
type devFS struct {
	dir    string
	root   *fs.Inode
	server *fuse.Server
}

type devRoot struct{ fs.Inode }

func mountDevFS(dir string, s *server) (*devFS, error) {
	// A server that died left its mount behind, dead; we hold the lock.
	unix.Unmount(dir, unix.MNT_DETACH)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	root := &devRoot{}
	zero := time.Duration(0)
	fsrv, err := fs.Mount(dir, root, &fs.Options{
		EntryTimeout: &zero,
		AttrTimeout:  &zero,
		MountOptions: fuse.MountOptions{
			FsName:     s.dir,
			Name:       "strata-thin",
			AllowOther: true,
			MaxWrite:   maxWrite,
			// As many requests in flight as the loop device queues
			// (nr_requests, 128).
			MaxBackground: 128,
			// The loop device submits direct I/O asynchronously; without
			// this capability FUSE would make each request synchronous.
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			DisableXAttrs:     true,
			DirectMount:       true,
		},
	})
	if err != nil {
		return nil, err
	}
	return &devFS{dir: dir, root: &root.Inode, server: fsrv}, nil
}

func (f *devFS) add(id uint32, file *devFile) {
	ctx := context.Background()
	// A fresh inode number each time: the kernel may still know the inode
	// of an earlier activation, of a device since deleted and made again.
	child := f.root.NewPersistentInode(ctx, file, fs.StableAttr{Mode: fuse.S_IFREG})
	f.root.AddChild(strconv.FormatUint(uint64(id), 10), child, true)
}

func (f *devFS) remove(id uint32) {
	name := strconv.FormatUint(uint64(id), 10)
	f.root.RmChild(name)
	f.root.NotifyEntry(name)
}

func (f *devFS) path(id uint32) string {
	return f.dir + "/" + strconv.FormatUint(uint64(id), 10)
}

func (f *devFS) unmount() error {
	if err := f.server.Unmount(); err != nil {
		return unix.Unmount(f.dir, unix.MNT_DETACH)
	}
	return nil
}

// devFile is one thin device as a file. Its handlers allocate nothing of
// their own: the kernel's buffers are read into and written from directly.
type devFile struct {
	fs.Inode
	pool *thinp.Pool
	s    *server
	id   uint32
	size int64
}

var (
	_ fs.NodeOpener    = (*devFile)(nil)
	_ fs.NodeGetattrer = (*devFile)(nil)
	_ fs.NodeReader    = (*devFile)(nil)
	_ fs.NodeWriter    = (*devFile)(nil)
	_ fs.NodeFsyncer   = (*devFile)(nil)
	_ fs.NodeFlusher   = (*devFile)(nil)
	_ fs.NodeAllocater = (*devFile)(nil)
	_ fs.NodeSetattrer = (*devFile)(nil)
)

func (f *devFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

func (f *devFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFREG | 0o600
	out.Size = uint64(f.size)
	out.Blksize = 4096
	out.Blocks = uint64(f.size) / 512
	return 0
}

// Setattr accepts only what changes nothing (the loop driver never
// truncates; a size is the device's).
func (f *devFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != f.size {
		return syscall.EPERM
	}
	return f.Getattr(ctx, fh, out)
}

func (f *devFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= f.size {
		return fuse.ReadResultData(nil), 0
	}
	if rest := f.size - off; int64(len(dest)) > rest {
		dest = dest[:rest]
	}
	n, err := f.pool.ReadAt(f.id, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *devFile) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if off+int64(len(data)) > f.size {
		return 0, syscall.EFBIG
	}
	n, err := f.pool.WriteAt(f.id, data, off)
	f.s.writes.Add(1)
	if err != nil {
		return uint32(n), errno(err)
	}
	return uint32(n), 0
}

// Fsync is the loop device's flush: the point where writes become durable.
func (f *devFile) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return errno(f.s.flush())
}

func (f *devFile) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

// Allocate serves the loop device's discard and write-zeroes: the range is
// made to read as zeros (Pool.Zero), its whole blocks unmapped.
func (f *devFile) Allocate(ctx context.Context, fh fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	switch {
	case mode == 0:
		return 0 // blocks are provisioned on write
	case mode&unix.FALLOC_FL_KEEP_SIZE == 0, mode&^(unix.FALLOC_FL_KEEP_SIZE|unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_ZERO_RANGE) != 0:
		return syscall.EOPNOTSUPP
	}
	start, end := int64(off), min(int64(off+size), f.size)
	if start >= end {
		return 0
	}
	defer f.s.writes.Add(1)
	return errno(f.pool.Zero(f.id, start, end-start))
}

// errno is what the kernel passes on to the writer: ENOSPC when the pool is
// full (the loop device turns it into an I/O error), EIO otherwise.
func errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, thinp.ErrNoSpace):
		return syscall.ENOSPC
	}
	return syscall.EIO
}
