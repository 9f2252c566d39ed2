package thinp

import (
	"encoding/binary"
	"maps"
	"slices"
)

// spaceMap holds the reference count of every block of one space (data or
// metadata). On disk it is persistent-data's sm_disk: 2-bit counts in
// bitmap blocks, 3 meaning "see the reference-count tree", and an index
// entry per bitmap with its number of free blocks. A bitmap is decoded only
// when one of its blocks is first counted, allocated or freed, so that
// opening a pool costs the same whatever its size: the index entries give
// the used and free totals, and allocation skips full bitmaps unread.
// Blocks freed in the running transaction stay unallocatable until it
// commits, because the committed trees may still point at them.
type spaceMap struct {
	nrBlocks  uint64
	allocated uint64
	nrFreed   uint64
	bitmaps   []bitmap
	// overflow holds the counts of 3 or more: the reference-count tree,
	// read whole at Open (it only holds blocks shared three ways).
	overflow map[uint64]uint32
	dirty    map[int]bool // bitmaps changed in this transaction
	// overflowDirty says the reference-count tree must be rewritten.
	overflowDirty bool
	cursor        uint64
	// errors counts references to blocks past the end, decrements of
	// counts of 0 and bitmaps disagreeing with their index entry or the
	// reference-count tree: corrupt metadata or a bug, reported as needing
	// a check.
	errors int
	// err is the first failure to read a bitmap: the blocks it counts are
	// never allocated and the pool refuses to commit.
	err error
	// read returns the checked contents of the bitmap block at loc.
	read func(loc uint64) ([]byte, error)
}

// bitmap is one bitmap block's share of a space map.
type bitmap struct {
	loc            uint64   // metadata block (0: not written yet)
	nrFree         uint32   // blocks counted 0, freed ones included
	noneFreeBefore uint32   // as the index entry last said
	nrFreed        uint32   // blocks freed in this transaction
	counts         []uint8  // nil until loaded; 3: see overflow
	freed          []uint64 // bitset: freed in this transaction
	failed         bool     // could not be read
}

// newSpaceMap returns an empty space map of nrBlocks.
func newSpaceMap(nrBlocks uint64) *spaceMap {
	sm := &spaceMap{dirty: map[int]bool{}, overflow: map[uint64]uint32{}}
	sm.grow(nrBlocks)
	return sm
}

// openSpaceMap returns the space map of nrBlocks whose bitmaps the index
// entries describe; read loads a bitmap block when it is first needed.
func openSpaceMap(nrBlocks uint64, entries [][]byte, overflow map[uint64]uint32, read func(uint64) ([]byte, error)) *spaceMap {
	sm := &spaceMap{nrBlocks: nrBlocks, dirty: map[int]bool{}, overflow: overflow, read: read}
	sm.bitmaps = make([]bitmap, len(entries))
	for i, e := range entries {
		bm := &sm.bitmaps[i]
		bm.loc = binary.LittleEndian.Uint64(e)
		bm.nrFree = binary.LittleEndian.Uint32(e[8:])
		bm.noneFreeBefore = binary.LittleEndian.Uint32(e[12:])
		if n := sm.entries(i); bm.nrFree > n {
			sm.errors++
			bm.nrFree = n
		}
		sm.allocated += uint64(sm.entries(i) - bm.nrFree)
	}
	return sm
}

func (sm *spaceMap) size() uint64 { return sm.nrBlocks }
func (sm *spaceMap) used() uint64 { return sm.allocated }
func (sm *spaceMap) free() uint64 { return sm.nrBlocks - sm.allocated - sm.nrFreed }

func (sm *spaceMap) nrBitmaps() int {
	return int((sm.nrBlocks + entriesPerBitmap - 1) / entriesPerBitmap)
}

// entries returns the number of blocks bitmap i counts.
func (sm *spaceMap) entries(i int) uint32 {
	return uint32(min(entriesPerBitmap, sm.nrBlocks-uint64(i)*entriesPerBitmap))
}

// load decodes bitmap i if it is not yet, and returns it.
func (sm *spaceMap) load(i int) *bitmap {
	bm := &sm.bitmaps[i]
	if bm.counts != nil || bm.failed {
		return bm
	}
	b, err := sm.read(bm.loc)
	if err != nil {
		bm.failed = true
		if sm.err == nil {
			sm.err = err
		}
		return bm
	}
	bm.counts = make([]uint8, entriesPerBitmap)
	bm.freed = make([]uint64, (entriesPerBitmap+63)/64)
	first := uint64(i) * entriesPerBitmap
	var nrFree uint32
	for e := range sm.entries(i) {
		bit := 2 * e
		hi := b[bitmapHeaderSize+bit/8] >> (bit % 8) & 1
		lo := b[bitmapHeaderSize+(bit+1)/8] >> ((bit + 1) % 8) & 1
		v := hi<<1 | lo
		bm.counts[e] = v
		switch {
		case v == 0:
			nrFree++
		case v == 3 && sm.overflow[first+uint64(e)] < 3:
			sm.errors++
			sm.overflow[first+uint64(e)] = 3
		}
	}
	if nrFree != bm.nrFree {
		sm.errors++
		sm.allocated += uint64(bm.nrFree) - uint64(nrFree)
		bm.nrFree = nrFree
	}
	return bm
}

// grow extends the space to nrBlocks; the new bitmaps are written at the
// next commit.
func (sm *spaceMap) grow(nrBlocks uint64) {
	old := sm.nrBitmaps()
	if old > 0 {
		last := sm.load(old - 1) // its index entry counts more free blocks
		last.nrFree += uint32(min(entriesPerBitmap, nrBlocks-uint64(old-1)*entriesPerBitmap)) - sm.entries(old-1)
		sm.dirty[old-1] = true
	}
	sm.nrBlocks = nrBlocks
	for i := old; i < sm.nrBitmaps(); i++ {
		sm.bitmaps = append(sm.bitmaps, bitmap{
			nrFree: sm.entries(i),
			counts: make([]uint8, entriesPerBitmap),
			freed:  make([]uint64, (entriesPerBitmap+63)/64),
		})
		sm.dirty[i] = true
	}
}

func (sm *spaceMap) count(b uint64) uint32 {
	if b >= sm.nrBlocks {
		sm.errors++
		return 0
	}
	bm := sm.load(int(b / entriesPerBitmap))
	if bm.failed {
		return 1 // unknown: in use as far as anyone can tell
	}
	if c := bm.counts[b%entriesPerBitmap]; c < 3 {
		return uint32(c)
	}
	return sm.overflow[b]
}

func (sm *spaceMap) set(b uint64, c uint32) {
	if b >= sm.nrBlocks {
		sm.errors++
		return
	}
	i, e := int(b/entriesPerBitmap), b%entriesPerBitmap
	old := sm.count(b)
	bm := &sm.bitmaps[i]
	if bm.failed {
		sm.errors++
		return
	}
	bm.counts[e] = uint8(min(c, 3))
	sm.dirty[i] = true
	if old >= 3 || c >= 3 {
		sm.overflowDirty = true
		if c >= 3 {
			sm.overflow[b] = c
		} else {
			delete(sm.overflow, b)
		}
	}
	freed := bm.freed[e/64]&(1<<(e%64)) != 0
	switch {
	case old == 0 && c > 0:
		sm.allocated++
		bm.nrFree--
		if freed { // referenced again: no longer this transaction's to free
			bm.freed[e/64] &^= 1 << (e % 64)
			bm.nrFreed--
			sm.nrFreed--
		}
	case old > 0 && c == 0:
		sm.allocated--
		bm.nrFree++
		bm.freed[e/64] |= 1 << (e % 64)
		bm.nrFreed++
		sm.nrFreed++
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

// alloc returns a free block with a count of 1, looking from the cursor on
// and skipping the bitmaps that have none.
func (sm *spaceMap) alloc() (uint64, bool) {
	if sm.nrBlocks == 0 {
		return 0, false
	}
	start := int(sm.cursor % sm.nrBlocks / entriesPerBitmap)
	n := sm.nrBitmaps()
	for k := range n + 1 { // the first bitmap twice: after the cursor, then before
		i := (start + k) % n
		if sm.bitmaps[i].nrFree == sm.bitmaps[i].nrFreed {
			continue
		}
		bm := sm.load(i)
		if bm.failed {
			continue
		}
		from := uint32(0)
		if k == 0 {
			from = uint32(sm.cursor % sm.nrBlocks % entriesPerBitmap)
		}
		for e := from; e < sm.entries(i); e++ {
			if bm.counts[e] == 0 && bm.freed[e/64]&(1<<(e%64)) == 0 {
				b := uint64(i)*entriesPerBitmap + uint64(e)
				sm.set(b, 1)
				sm.cursor = b + 1
				return b, true
			}
		}
	}
	return 0, false
}

// committed forgets which blocks were freed: the transaction that stopped
// using them is on disk.
func (sm *spaceMap) committed() {
	for i := range sm.bitmaps {
		if bm := &sm.bitmaps[i]; bm.nrFreed > 0 {
			clear(bm.freed)
			bm.nrFreed = 0
		}
	}
	sm.nrFreed = 0
	sm.dirty = map[int]bool{}
	sm.overflowDirty = false
}

// entry returns the index entry of bitmap i (struct disk_index_entry).
func (sm *spaceMap) entry(i int) []byte {
	bm := &sm.bitmaps[i]
	e := make([]byte, indexValueSize)
	binary.LittleEndian.PutUint64(e, bm.loc)
	binary.LittleEndian.PutUint32(e[8:], bm.nrFree)
	binary.LittleEndian.PutUint32(e[12:], bm.noneFreeBefore)
	return e
}

// encodeBitmap returns loaded bitmap i as a block for its location, and
// updates its index entry.
func (sm *spaceMap) encodeBitmap(i int) []byte {
	bm := &sm.bitmaps[i]
	b := make([]byte, metaBlockSize)
	binary.LittleEndian.PutUint64(b[8:], bm.loc)
	n := sm.entries(i)
	bm.noneFreeBefore = n
	for e := range n {
		v := bm.counts[e]
		if v == 0 {
			bm.noneFreeBefore = min(bm.noneFreeBefore, e)
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
	return b
}

// overflowEntries returns the reference-count tree's entries: blocks
// counted 3 or more, in order.
func (sm *spaceMap) overflowEntries() (keys []uint64, values []byte) {
	keys = slices.Sorted(maps.Keys(sm.overflow))
	for _, b := range keys {
		values = binary.LittleEndian.AppendUint32(values, sm.overflow[b])
	}
	return keys, values
}
