package thinp

import (
	"fmt"
	"io"
	"sync"

	"github.com/strata-storage/strata/errdefs"
)

// blockBuffers recycles the buffers of partial writes to new blocks.
var blockBuffers sync.Pool

// ReadAt reads from device id; unmapped blocks read as zeros. Reading past
// the device's end returns io.EOF.
func (p *Pool) ReadAt(id uint32, b []byte, off int64) (int, error) {
	p.io.RLock()
	defer p.io.RUnlock()
	b, short, err := p.clip(id, b, off)
	if err != nil {
		return 0, err
	}
	n := 0
	for n < len(b) {
		vblock, inner := (off+int64(n))/p.blockSize, (off+int64(n))%p.blockSize
		chunk := b[n:min(len(b), n+int(p.blockSize-inner))]
		p.mu.Lock()
		dataBlock, mapped, _, err := p.md.mapping(id, uint64(vblock))
		p.mu.Unlock()
		if err != nil {
			return n, fmt.Errorf("read thin device %d: %w", id, err)
		}
		if !mapped {
			clear(chunk)
		} else if _, err := p.data.ReadAt(chunk, int64(dataBlock)*p.blockSize+inner); err != nil {
			return n, fmt.Errorf("read thin device %d: %w", id, err)
		}
		n += len(chunk)
	}
	if short {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes to device id, provisioning blocks as needed. A block
// shared with a snapshot is copied whole to a new block first. When the
// pool is full the error wraps ErrNoSpace.
func (p *Pool) WriteAt(id uint32, b []byte, off int64) (int, error) {
	p.io.RLock()
	defer p.io.RUnlock()
	b, short, err := p.clip(id, b, off)
	if err != nil {
		return 0, err
	}
	n := 0
	for n < len(b) {
		vblock, inner := (off+int64(n))/p.blockSize, (off+int64(n))%p.blockSize
		chunk := b[n:min(len(b), n+int(p.blockSize-inner))]
		p.unsynced.Store(true)
		if err := p.writeBlock(id, uint64(vblock), inner, chunk); err != nil {
			return n, fmt.Errorf("write thin device %d: %w", id, err)
		}
		n += len(chunk)
	}
	if short {
		return n, fmt.Errorf("write thin device %d at %d: %w", id, off+int64(n), io.ErrShortWrite)
	}
	return n, nil
}

// writeBlock writes chunk at inner in virtual block vblock. Only the
// metadata work holds p.mu: the copy into a new block runs outside it, with
// the block marked as being provisioned so that other writers of the same
// block wait for the mapping.
func (p *Pool) writeBlock(id uint32, vblock uint64, inner int64, chunk []byte) error {
	key := blockKey{id, vblock}
	for {
		p.mu.Lock()
		if wait := p.provisioning[key]; wait != nil {
			p.mu.Unlock()
			<-wait
			continue
		}
		old, mapped, shared, err := p.md.mapping(id, vblock)
		if err != nil {
			p.mu.Unlock()
			return err
		}
		if mapped && !shared {
			p.mu.Unlock()
			_, err := p.data.WriteAt(chunk, int64(old)*p.blockSize+inner)
			return err
		}
		fresh, err := p.md.allocData()
		if err != nil {
			p.mu.Unlock()
			return p.noteSpace(err)
		}
		done := make(chan struct{})
		p.provisioning[key] = done
		p.mu.Unlock()

		err = p.fill(fresh, old, mapped, inner, chunk)

		p.mu.Lock()
		if err == nil {
			err = p.noteSpace(p.md.setMapping(id, vblock, fresh))
		}
		if err != nil {
			p.md.data.dec(fresh)
		}
		delete(p.provisioning, key)
		close(done)
		p.mu.Unlock()
		return err
	}
}

// fill writes a new data block: chunk at inner, and around it the old
// block's contents when there was one, zeros otherwise.
func (p *Pool) fill(fresh, old uint64, copyOld bool, inner int64, chunk []byte) error {
	if int64(len(chunk)) == p.blockSize {
		_, err := p.data.WriteAt(chunk, int64(fresh)*p.blockSize)
		return err
	}
	bp, _ := blockBuffers.Get().(*[]byte)
	if bp == nil || int64(len(*bp)) != p.blockSize {
		b := make([]byte, p.blockSize)
		bp = &b
	}
	defer blockBuffers.Put(bp)
	buf := *bp
	if copyOld {
		if _, err := p.data.ReadAt(buf, int64(old)*p.blockSize); err != nil {
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
// releasing the data blocks no other device maps.
func (p *Pool) Discard(id uint32, off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("%w: discard %d bytes at %d", errdefs.ErrInvalid, length, off)
	}
	first := (off + p.blockSize - 1) / p.blockSize
	end := (off + length) / p.blockSize
	p.io.Lock()
	defer p.io.Unlock()
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
