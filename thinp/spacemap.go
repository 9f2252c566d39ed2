package thinp

import "encoding/binary"

// spaceMap holds the reference count of every block of one space (data or
// metadata) in memory. On disk it is persistent-data's sm_disk: 2-bit counts
// in bitmap blocks, 3 meaning "see the reference-count tree". Blocks freed
// in the running transaction stay unallocatable until it commits, because
// the committed trees may still point at them.
type spaceMap struct {
	counts    []uint32
	allocated uint64
	overflow  uint64   // blocks counted 3 or more: entries of the refcount tree
	freed     []uint64 // bitset: freed in this transaction
	nrFreed   uint64
	dirty     map[int]bool // bitmaps changed in this transaction
	// overflowDirty says the reference-count tree must be rewritten.
	overflowDirty bool
	cursor        uint64
	// errors counts references to blocks past the end and decrements of
	// counts of 0: corrupt metadata or a bug, reported as needing a check.
	errors int
	// bitmaps is the metadata block of each bitmap (0: not written yet).
	bitmaps []uint64
}

func newSpaceMap(nrBlocks uint64) *spaceMap {
	sm := &spaceMap{dirty: map[int]bool{}}
	sm.grow(nrBlocks)
	return sm
}

func (sm *spaceMap) size() uint64 { return uint64(len(sm.counts)) }
func (sm *spaceMap) used() uint64 { return sm.allocated }
func (sm *spaceMap) free() uint64 { return sm.size() - sm.allocated - sm.nrFreed }

func (sm *spaceMap) isFreed(b uint64) bool { return sm.freed[b/64]&(1<<(b%64)) != 0 }

func (sm *spaceMap) nrBitmaps() int {
	return int((sm.size() + entriesPerBitmap - 1) / entriesPerBitmap)
}

// grow extends the space to nrBlocks; the new bitmaps are written at the
// next commit.
func (sm *spaceMap) grow(nrBlocks uint64) {
	old := sm.nrBitmaps()
	if old > 0 {
		sm.dirty[old-1] = true // its index entry counts more free blocks
	}
	sm.counts = append(sm.counts, make([]uint32, nrBlocks-sm.size())...)
	sm.freed = append(sm.freed, make([]uint64, (nrBlocks+63)/64-uint64(len(sm.freed)))...)
	for i := old; i < sm.nrBitmaps(); i++ {
		sm.bitmaps = append(sm.bitmaps, 0)
		sm.dirty[i] = true
	}
}

func (sm *spaceMap) count(b uint64) uint32 {
	if b >= sm.size() {
		sm.errors++
		return 0
	}
	return sm.counts[b]
}

func (sm *spaceMap) set(b uint64, c uint32) {
	if b >= sm.size() {
		sm.errors++
		return
	}
	old := sm.counts[b]
	sm.counts[b] = c
	sm.dirty[int(b/entriesPerBitmap)] = true
	if old >= 3 || c >= 3 {
		sm.overflowDirty = true
		if old >= 3 {
			sm.overflow--
		}
		if c >= 3 {
			sm.overflow++
		}
	}
	switch {
	case old == 0 && c > 0:
		sm.allocated++
	case old > 0 && c == 0:
		sm.allocated--
		if !sm.isFreed(b) {
			sm.freed[b/64] |= 1 << (b % 64)
			sm.nrFreed++
		}
	}
}

func (sm *spaceMap) inc(b uint64) { sm.set(b, sm.count(b)+1) }

// dec drops one reference and returns the count left.
func (sm *spaceMap) dec(b uint64) uint32 {
	c := sm.count(b)
	if c == 0 {
		sm.errors++
		return 0
	}
	sm.set(b, c-1)
	return c - 1
}

// alloc returns a free block with a count of 1.
func (sm *spaceMap) alloc() (uint64, bool) {
	n := sm.size()
	for i := uint64(0); i < n; i++ {
		b := (sm.cursor + i) % n
		if sm.counts[b] == 0 && !sm.isFreed(b) {
			sm.set(b, 1)
			sm.cursor = b + 1
			return b, true
		}
	}
	return 0, false
}

// committed forgets which blocks were freed: the transaction that stopped
// using them is on disk.
func (sm *spaceMap) committed() {
	clear(sm.freed)
	sm.nrFreed = 0
	sm.dirty = map[int]bool{}
	sm.overflowDirty = false
}

// encodeBitmap returns bitmap i as a block to be written at loc, and its
// index entry (struct disk_index_entry).
func (sm *spaceMap) encodeBitmap(i int, loc uint64) (block, entry []byte) {
	b := make([]byte, metaBlockSize)
	binary.LittleEndian.PutUint64(b[8:], loc)
	first := uint64(i) * entriesPerBitmap
	end := min(first+entriesPerBitmap, sm.size())
	var nrFree, noneFreeBefore uint32
	noneFreeBefore = uint32(end - first)
	for blk := first; blk < end; blk++ {
		e := blk - first
		v := min(sm.counts[blk], 3)
		if v == 0 {
			if nrFree == 0 {
				noneFreeBefore = uint32(e)
			}
			nrFree++
			continue
		}
		// Entry e is bits 2e (high) and 2e+1 (low) of the little-endian
		// words after the header.
		bit := 2 * e
		if v&2 != 0 {
			b[bitmapHeaderSize+bit/8] |= 1 << (bit % 8)
		}
		if v&1 != 0 {
			b[bitmapHeaderSize+(bit+1)/8] |= 1 << ((bit + 1) % 8)
		}
	}
	seal(b, bitmapCsumXor)
	entry = make([]byte, indexValueSize)
	binary.LittleEndian.PutUint64(entry, loc)
	binary.LittleEndian.PutUint32(entry[8:], nrFree)
	binary.LittleEndian.PutUint32(entry[12:], noneFreeBefore)
	return b, entry
}

// decodeBitmap loads the counts of bitmap i from block b; counts of 3 are
// replaced later from the reference-count tree.
func (sm *spaceMap) decodeBitmap(i int, b []byte) {
	first := uint64(i) * entriesPerBitmap
	end := min(first+entriesPerBitmap, sm.size())
	for blk := first; blk < end; blk++ {
		bit := 2 * (blk - first)
		hi := b[bitmapHeaderSize+bit/8] >> (bit % 8) & 1
		lo := b[bitmapHeaderSize+(bit+1)/8] >> ((bit + 1) % 8) & 1
		if v := uint32(hi<<1 | lo); v != 0 {
			sm.counts[blk] = v
			sm.allocated++
			if v == 3 {
				sm.overflow++
			}
		}
	}
}

// overflowEntries returns the reference-count tree's entries: blocks
// counted 3 or more, in order.
func (sm *spaceMap) overflowEntries() (keys []uint64, values []byte) {
	for b, c := range sm.counts {
		if c >= 3 {
			keys = append(keys, uint64(b))
			values = binary.LittleEndian.AppendUint32(values, c)
		}
	}
	return keys, values
}
