package thinp

import (
	"fmt"
	"io"

	"github.com/strata-storage/strata/errdefs"
)

// ReadAt reads from device id; unmapped blocks read as zeros. Reading past
// the device's end returns io.EOF. Blocks consecutive in the data file are
// read by one pread.
func (p *Pool) ReadAt(id uint32, b []byte, off int64) (int, error) {
	p.io.RLock()
	defer p.io.RUnlock()
	b, short, err := p.clip(id, b, off)
	if err != nil {
		return 0, err
	}
	r := reader{p: p, b: b}
	for n := 0; n < len(b) && err == nil; {
		vblock, inner := (off+int64(n))/p.blockSize, (off+int64(n))%p.blockSize
		end := min(len(b), n+int(p.blockSize-inner))
		err = r.block(id, uint64(vblock), inner, n, end)
		n = end
	}
	if ferr := r.flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return r.read, fmt.Errorf("read thin device %d: %w", id, err)
	}
	if short {
		return r.read, io.EOF
	}
	return r.read, nil
}

// reader is one ReadAt: it gathers the mapped blocks it reads that are
// consecutive in the data file into one run, read by one pread.
type reader struct {
	p    *Pool
	b    []byte
	read int // bytes of b read, a prefix

	// The pending run: b[lo:hi] comes from byte pos of the data file.
	lo, hi int
	pos    int64
}

// block reads b[lo:hi] from inner in virtual block vblock of device id.
func (r *reader) block(id uint32, vblock uint64, inner int64, lo, hi int) error {
	p := r.p
	p.mu.Lock()
	dataBlock, mapped, _, err := p.md.mapping(id, vblock)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if !mapped {
		if err := r.flush(); err != nil {
			return err
		}
		clear(r.b[lo:hi])
		r.read = hi
		return nil
	}
	pos := int64(dataBlock)*p.blockSize + inner
	if r.hi == r.lo || lo != r.hi || pos != r.pos+int64(r.hi-r.lo) {
		if err := r.flush(); err != nil {
			return err
		}
		r.lo, r.pos = lo, pos
	}
	r.hi = hi
	return nil
}

// flush reads the pending run.
func (r *reader) flush() error {
	if r.hi == r.lo {
		return nil
	}
	_, err := r.p.data.ReadAt(r.b[r.lo:r.hi], r.pos)
	if err == nil {
		r.read = r.hi
	}
	r.lo, r.hi = 0, 0
	return err
}

// WriteAt writes to device id, provisioning blocks as needed. A block
// shared with a snapshot is copied whole to a new block first. When the
// pool is full the error wraps ErrNoSpace. Writes run in parallel, except
// one not aligned to the sectors of the data file's direct I/O, which runs
// alone: it rewrites the sectors at its edges.
func (p *Pool) WriteAt(id uint32, data []byte, off int64) (int, error) {
	p.io.RLock()
	b, short, err := p.clip(id, data, off)
	if err == nil && !p.data.alignedRange(off, len(b)) {
		p.io.RUnlock()
		p.io.Lock()
		defer p.io.Unlock()
		b, short, err = p.clip(id, data, off)
	} else {
		defer p.io.RUnlock()
	}
	if err != nil {
		return 0, err
	}
	p.unsynced.Store(true)
	w := writer{p: p, id: id, b: b}
	for n := 0; n < len(b) && err == nil; {
		vblock, inner := (off+int64(n))/p.blockSize, (off+int64(n))%p.blockSize
		end := min(len(b), n+int(p.blockSize-inner))
		err = w.block(uint64(vblock), inner, n, end)
		n = end
	}
	if ferr := w.flush(); err == nil {
		err = ferr
	}
	if err != nil {
		p.provided(w.ahead, err)
		return w.written, fmt.Errorf("write thin device %d: %w", id, err)
	}
	if short {
		return w.written, fmt.Errorf("write thin device %d at %d: %w", id, off+int64(w.written), io.ErrShortWrite)
	}
	return w.written, nil
}

// writer is one WriteAt. It gathers the whole blocks it writes that are
// consecutive in the data file, as new blocks mostly are, into one run
// written by one pwrite: per 64 KiB block, a system call costs as much as
// the pool's metadata work.
type writer struct {
	p       *Pool
	id      uint32
	b       []byte
	written int // bytes of b written, a prefix

	// The pending run: b[lo:hi] goes to data block first at inner; fresh
	// are its new blocks, mapped once their data is written.
	lo, hi int
	first  uint64
	inner  int64
	fresh  []provision

	// ahead are the new blocks provisioned for the next whole blocks of b
	// along with one before them, in order.
	ahead []provision
}

// provision is a new data block for a virtual block, marked as being
// provisioned so that other writers of the virtual block wait for its
// mapping.
type provision struct {
	key   blockKey
	block uint64
	done  chan struct{}
}

// block writes b[lo:hi] at inner in virtual block vblock. Only the metadata
// work holds p.mu: data is written outside it.
func (w *writer) block(vblock uint64, inner int64, lo, hi int) error {
	p := w.p
	key := blockKey{w.id, vblock}
	if len(w.ahead) > 0 && w.ahead[0].key == key {
		pr := w.ahead[0]
		w.ahead = w.ahead[1:]
		return w.add(pr.block, 0, lo, hi, &pr)
	}
	for {
		p.mu.Lock()
		if wait := p.provisioning[key]; wait != nil {
			p.mu.Unlock()
			if err := w.flush(); err != nil {
				return err
			}
			<-wait
			continue
		}
		old, mapped, shared, err := p.md.mapping(w.id, vblock)
		if err != nil {
			p.mu.Unlock()
			return err
		}
		if mapped && !shared {
			p.mu.Unlock()
			return w.add(old, inner, lo, hi, nil)
		}
		fresh, err := p.md.allocData()
		if err != nil {
			p.mu.Unlock()
			return p.noteSpace(err)
		}
		pr := provision{key, fresh, make(chan struct{})}
		p.provisioning[key] = pr.done
		whole := int64(hi-lo) == p.blockSize
		if whole {
			w.provisionAhead(vblock, hi)
		}
		p.mu.Unlock()
		p.data.allocate(int64(fresh) * p.blockSize)
		for _, pr := range w.ahead {
			p.data.allocate(int64(pr.block) * p.blockSize)
		}

		if whole {
			return w.add(fresh, 0, lo, hi, &pr)
		}
		if err := w.flush(); err != nil {
			p.provided([]provision{pr}, err)
			return err
		}
		err = p.fill(fresh, old, mapped, inner, w.b[lo:hi])
		if err = p.provided([]provision{pr}, err); err == nil {
			w.written = hi
		}
		return err
	}
}

// provisionAhead provisions new blocks for the whole blocks of b after
// vblock (which ends at b[hi]) that need one, up to the first that does
// not or that another writer is provisioning. Taken under one hold of
// p.mu, the allocator hands out consecutive data blocks, which one pwrite
// writes; block by block, concurrent writers would take turns. Holding
// these, the writer waits for no other: the next block it waits for
// comes after them.
func (w *writer) provisionAhead(vblock uint64, hi int) {
	p := w.p
	for v := vblock + 1; int64(hi)+int64(v-vblock)*p.blockSize <= int64(len(w.b)); v++ {
		key := blockKey{w.id, v}
		if p.provisioning[key] != nil {
			return
		}
		_, mapped, shared, err := p.md.mapping(w.id, v)
		if err != nil || mapped && !shared {
			return
		}
		fresh, err := p.md.allocData()
		if err != nil {
			return // the block's own turn reports it
		}
		pr := provision{key, fresh, make(chan struct{})}
		p.provisioning[key] = pr.done
		w.ahead = append(w.ahead, pr)
	}
}

// add appends b[lo:hi], bound for data block dataBlock at inner, to the
// pending run, or starts a new run when it does not follow on.
func (w *writer) add(dataBlock uint64, inner int64, lo, hi int, pr *provision) error {
	end := w.inner + int64(w.hi-w.lo) // the run's end, from the start of block first
	follows := w.hi > w.lo && lo == w.hi && inner == 0 && end%w.p.blockSize == 0 && dataBlock == w.first+uint64(end/w.p.blockSize)
	if !follows {
		if err := w.flush(); err != nil {
			if pr != nil {
				w.p.provided([]provision{*pr}, err)
			}
			return err
		}
		w.lo, w.first, w.inner = lo, dataBlock, inner
	}
	w.hi = hi
	if pr != nil {
		w.fresh = append(w.fresh, *pr)
	}
	return nil
}

// flush writes the pending run and maps its new blocks.
func (w *writer) flush() error {
	if w.hi == w.lo {
		return nil
	}
	_, err := w.p.data.WriteAt(w.b[w.lo:w.hi], int64(w.first)*w.p.blockSize+w.inner)
	if err = w.p.provided(w.fresh, err); err == nil {
		w.written = w.hi
	}
	w.lo, w.hi, w.fresh = 0, 0, w.fresh[:0]
	return err
}

// provided maps the new blocks whose data is written, or releases them
// after err or a failure to map one, and wakes their waiters.
func (p *Pool) provided(prs []provision, err error) error {
	if len(prs) == 0 {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pr := range prs {
		if err == nil {
			err = p.noteSpace(p.md.setMapping(pr.key.dev, pr.key.vblock, pr.block))
		}
		if err != nil {
			p.md.data.dec(pr.block)
		}
		delete(p.provisioning, pr.key)
		close(pr.done)
	}
	return err
}

// fill writes part of a new data block: chunk at inner, and around it the
// old block's contents when there was one, zeros otherwise.
func (p *Pool) fill(fresh, old uint64, copyOld bool, inner int64, chunk []byte) error {
	bounce := getBounce()
	defer putBounce(bounce)
	buf := bounce[:p.blockSize]
	if copyOld {
		if _, err := p.data.readDirect(buf, int64(old)*p.blockSize); err != nil {
			return err
		}
	} else {
		clear(buf)
	}
	copy(buf[inner:], chunk)
	_, err := p.data.WriteAt(buf, int64(fresh)*p.blockSize)
	return err
}

// clip checks id and cuts b at the end of the device, saying whether it did.
func (p *Pool) clip(id uint32, b []byte, off int64) ([]byte, bool, error) {
	p.mu.Lock()
	size, ok := p.sizes[id]
	p.mu.Unlock()
	if !ok {
		return nil, false, fmt.Errorf("thin device %d: %w", id, errdefs.ErrNotFound)
	}
	if off < 0 {
		return nil, false, fmt.Errorf("%w: negative offset %d", errdefs.ErrInvalid, off)
	}
	if off >= size {
		return nil, len(b) > 0, nil
	}
	if off+int64(len(b)) > size {
		return b[:size-off], true, nil
	}
	return b, false, nil
}

// Discard unmaps the whole blocks of device id inside [off, off+length),
// releasing the data blocks no other device maps. It runs alongside reads
// and writes: holding the I/O lock exclusively would stall every request
// in flight, as a file system freshly made on a device zeroes its inode
// tables in the background (ext4's lazy init: 20 discards during a 1 GiB
// write, 36 ms each). A write or read racing a discard of its block may
// still use the block the discard frees; the space map hands that block
// out again only after the next commit, which waits for them.
func (p *Pool) Discard(id uint32, off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("%w: discard %d bytes at %d", errdefs.ErrInvalid, length, off)
	}
	first := (off + p.blockSize - 1) / p.blockSize
	end := (off + length) / p.blockSize
	p.io.RLock()
	defer p.io.RUnlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if first >= end {
		_, _, err := p.md.device(id)
		return err
	}
	if err := p.md.unmap(id, uint64(first), uint64(end)); err != nil {
		return p.noteSpace(fmt.Errorf("discard thin device %d: %w", id, err))
	}
	return nil
}

// Zero makes the length bytes at off of device id read as zeros, as a
// hole punch or a write of zeroes to a block device asks: the whole blocks
// of the range are unmapped (Discard), the parts of blocks at its edges
// written with zeros, unless those blocks are unmapped. An unmapped block
// reads as zeros already, and zeroing part of it would provision it and
// write a whole block of zeros. A file system zeroing its inode tables in
// the background (ext4's lazy init) asks for ranges whose edges mostly
// fall in unmapped blocks, and a loop device waits for each before it
// serves its next request.
func (p *Pool) Zero(id uint32, off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("%w: zero %d bytes at %d", errdefs.ErrInvalid, length, off)
	}
	end := off + length
	first := (off + p.blockSize - 1) / p.blockSize * p.blockSize
	last := end / p.blockSize * p.blockSize
	if first > last { // inside one block
		return p.zeroPart(id, off, end)
	}
	if err := p.zeroPart(id, off, first); err != nil {
		return err
	}
	if err := p.zeroPart(id, last, end); err != nil {
		return err
	}
	return p.Discard(id, first, last-first)
}

// zeroPart writes zeros over [start, end), part of one block of device id,
// unless the block is unmapped and no write is provisioning it.
func (p *Pool) zeroPart(id uint32, start, end int64) error {
	if start >= end {
		return nil
	}
	vblock := uint64(start / p.blockSize)
	p.mu.Lock()
	_, mapped, _, err := p.md.mapping(id, vblock)
	busy := p.provisioning[blockKey{id, vblock}] != nil
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("zero thin device %d: %w", id, err)
	}
	if !mapped && !busy {
		return nil
	}
	_, err = p.WriteAt(id, make([]byte, end-start), start)
	return err
}
