package thinp

import (
	"errors"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dataFile is the pool's data file. Writes go in direct I/O (O_DIRECT)
// where the file system allows it: a plain loop device with direct I/O
// writes straight to the disk, while through the page cache the pool would
// fill pages it has never held (slow on fresh guest memory) and leave a
// commit's fdatasync to write them all back at once. Reads go through the
// page cache, whose readahead serves sequential reads better than direct
// reads of the loop device's request size; a direct write drops the pages
// it overwrites, so reads see it. Durability is unchanged: data is durable
// at the commit's fdatasync either way.
//
// A direct write into a hole of the file (ext4, xfs) allocates under the
// inode's lock held until the write completes: the device's parallel
// writes would go to the disk one at a time. The pool therefore allocates
// the file ahead of its data block allocator: direct writes into allocated
// (even unwritten) space run in parallel. An fallocate is not free either:
// it takes the inode's lock only once every direct write in flight is done
// and holds back new ones meanwhile (27 ms on a loaded disk, for 0.3 ms of
// allocating), so while the allocator keeps moving on, each allocation
// takes twice as many chunks as the one before, up to 1 GiB at once: a
// stream of new blocks stalls 5 times in its first GiB and once a GiB
// after it, not 16 times a GiB.
//
// Direct I/O needs offsets, lengths and memory aligned. go-fuse aligns the
// data of write requests; other buffers go through an aligned bounce
// buffer, and a write whose offset or length is not aligned reads the
// sectors at its edges first, so its caller must keep other writers of
// those sectors out (Pool.WriteAt takes the I/O lock exclusively).
type dataFile struct {
	*os.File // reads, size, sync
	// direct is the same file in direct I/O, nil when its file system
	// refuses direct I/O (tmpfs before 6.6, some FUSE file systems).
	direct *os.File
	// align is what direct writes need of offsets, lengths and memory; 1
	// without direct.
	align int64

	mu sync.Mutex
	// size is the file's size: chunks are allocated inside it.
	size int64
	// allocated holds the chunks this process has allocated (or tried to:
	// allocation is best effort, a write into a hole works too).
	allocated map[int64]bool
	// run is how many chunks the last allocation took.
	run int64
}

const (
	// bounceSize is the size of a bounce buffer: the largest data block, so
	// that one holds a whole block for a copy.
	bounceSize = 1 << 20
	// pageAlign is the alignment of bounce buffers, enough for any disk.
	pageAlign = 4096
	// allocChunk is how much of the file is allocated at once, ahead of
	// the blocks the data block allocator hands out next, when the chunk
	// before it is not allocated; maxAllocRun chunks at most when it is.
	allocChunk  = 64 << 20
	maxAllocRun = 16
)

// bounceBuffers recycles aligned bounce buffers of bounceSize bytes.
var bounceBuffers sync.Pool

// openDataFile opens the data file at path, and again in direct I/O when
// its file system supports it.
func openDataFile(path string, flag int, perm os.FileMode) (*dataFile, error) {
	f, err := os.OpenFile(path, flag, perm)
	if err != nil {
		return nil, err
	}
	d := &dataFile{File: f, align: 1, allocated: map[int64]bool{}}
	fi, err := f.Stat()
	if err == nil {
		d.size = fi.Size()
		err = d.openDirect(path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func (d *dataFile) openDirect(path string) error {
	var st unix.Statx_t
	if err := unix.Statx(int(d.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st); err != nil {
		return err
	}
	align := int64(pageAlign) // when the kernel does not say
	if st.Mask&unix.STATX_DIOALIGN != 0 {
		if st.Dio_offset_align == 0 {
			return nil // no direct I/O on this file
		}
		align = max(int64(st.Dio_mem_align), int64(st.Dio_offset_align))
	}
	if pageAlign%align != 0 {
		return nil // more than the bounce buffers' alignment
	}
	direct, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) {
		return nil
	}
	if err != nil {
		return err
	}
	d.direct, d.align = direct, align
	return nil
}

func (d *dataFile) Close() error {
	if d.direct != nil {
		return errors.Join(d.direct.Close(), d.File.Close())
	}
	return d.File.Close()
}

func (d *dataFile) Truncate(size int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.File.Truncate(size); err != nil {
		return err
	}
	d.size = size
	return nil
}

// allocate makes sure the chunk of the file holding byte off is allocated
// before a direct write to it. When the chunk before it is allocated, the
// allocator is moving on through the file: the chunks after it are
// allocated along with it, twice as many as the last time.
func (d *dataFile) allocate(off int64) {
	if d.direct == nil {
		return
	}
	chunk := off / allocChunk
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.allocated[chunk] {
		return
	}
	if d.allocated[chunk-1] {
		d.run = min(2*d.run, maxAllocRun)
	} else {
		d.run = 1
	}
	start := chunk * allocChunk
	n := int64(0)
	for ; n < d.run && start+n*allocChunk < d.size && !d.allocated[chunk+n]; n++ {
		d.allocated[chunk+n] = true
	}
	// A full disk or a file system without fallocate leaves the
	// chunks holes: writes to them then allocate one by one.
	unix.Fallocate(int(d.Fd()), unix.FALLOC_FL_KEEP_SIZE, start, min(n*allocChunk, d.size-start))
}

// alignedRange reports whether n bytes at off need no read of the sectors
// around them to be written.
func (d *dataFile) alignedRange(off int64, n int) bool {
	return off%d.align == 0 && int64(n)%d.align == 0
}

func (d *dataFile) WriteAt(b []byte, off int64) (int, error) {
	if d.direct == nil {
		return d.File.WriteAt(b, off)
	}
	if d.alignedRange(off, len(b)) && (len(b) == 0 || int64(uintptr(unsafe.Pointer(&b[0])))%d.align == 0) {
		return d.direct.WriteAt(b, off)
	}
	buf := getBounce()
	defer putBounce(buf)
	n := 0
	for n < len(b) {
		pos := off + int64(n)
		start := pos / d.align * d.align
		head := int(pos - start)
		end := min(head+len(b)-n, len(buf)) // of b's bytes in buf
		if head != 0 {
			if err := d.readSector(buf, start, 0); err != nil {
				return n, err
			}
		}
		if tail := end / int(d.align) * int(d.align); tail != end && (tail != 0 || head == 0) {
			if err := d.readSector(buf, start, tail); err != nil {
				return n, err
			}
		}
		copy(buf[head:end], b[n:])
		if _, err := d.direct.WriteAt(buf[:d.roundUp(end)], start); err != nil {
			return n, err
		}
		n += end - head
	}
	return n, nil
}

// readDirect reads b, aligned, at off in direct I/O when the file has it:
// an old block copied whole is read once, not kept in the page cache.
func (d *dataFile) readDirect(b []byte, off int64) (int, error) {
	if d.direct == nil {
		return d.File.ReadAt(b, off)
	}
	return d.direct.ReadAt(b, off)
}

// readSector reads the aligned sector at start+at into buf[at:].
func (d *dataFile) readSector(buf []byte, start int64, at int) error {
	_, err := d.readDirect(buf[at:at+int(d.align)], start+int64(at))
	return err
}

func (d *dataFile) roundUp(n int) int {
	a := int(d.align)
	return (n + a - 1) / a * a
}

// getBounce returns a bounceSize buffer aligned to pageAlign.
func getBounce() []byte {
	if bp, ok := bounceBuffers.Get().(*[]byte); ok {
		return *bp
	}
	b := make([]byte, bounceSize+pageAlign)
	skip := (pageAlign - int(uintptr(unsafe.Pointer(&b[0])))%pageAlign) % pageAlign
	return b[skip : skip+bounceSize : skip+bounceSize]
}

func putBounce(b []byte) { bounceBuffers.Put(&b) }
