package thinp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/sys/unix"
)

// commit writes the transaction: the dirty mapping-tree nodes, new device
// and details trees, the changed space-map blocks, then the superblock.
// syncBeside, which makes durable what the transaction needs outside the
// metadata file, runs while those blocks are synced.
func (md *metadata) commit(syncBeside func() error) error {
	if err := md.spaceErr(); err != nil {
		return err
	}
	writes := map[uint64][]byte{}
	for _, b := range md.rebuilt {
		md.release(b)
	}
	md.rebuilt = nil
	ids := md.devices()

	var detailKeys, rootKeys []uint64
	var detailVals, rootVals []byte
	for _, id := range ids {
		detailKeys = append(detailKeys, uint64(id))
		v := make([]byte, detailsValueSize)
		md.details[id].put(v)
		detailVals = append(detailVals, v...)
		rootKeys = append(rootKeys, uint64(id))
		rootVals = binary.LittleEndian.AppendUint64(rootVals, md.roots[id])
	}
	detailsRoot, err := md.build(detailKeys, detailVals, detailsValueSize, writes, &md.rebuilt)
	if err != nil {
		return err
	}
	mappingRoot, err := md.build(rootKeys, rootVals, 8, writes, &md.rebuilt)
	if err != nil {
		return err
	}

	// Data space map: its counts are final now.
	if md.data.overflowDirty {
		if md.dataRefRoot, err = md.rebuildRefcounts(md.data, &md.dataRefTree, writes); err != nil {
			return err
		}
	}
	for _, i := range slices.Sorted(maps.Keys(md.data.dirty)) {
		if err := md.relocateBitmap(md.data, i); err != nil {
			return err
		}
		writes[md.data.bitmaps[i].loc] = md.data.encodeBitmap(i)
	}
	indexKeys := make([]uint64, md.data.nrBitmaps())
	var indexVals []byte
	for i := range indexKeys {
		indexKeys[i] = uint64(i)
		indexVals = append(indexVals, md.data.entry(i)...)
	}
	dataIndexRoot, err := md.build(indexKeys, indexVals, indexValueSize, writes, &md.rebuilt)
	if err != nil {
		return err
	}

	// Metadata space map: relocating its own blocks changes its counts,
	// so relocate until every changed bitmap has a new home.
	if md.meta.overflowDirty {
		if md.metaRefRoot, err = md.rebuildRefcounts(md.meta, &md.metaRefTree, writes); err != nil {
			return err
		}
	}
	if md.metaIndex, err = md.allocMeta(); err != nil {
		return err
	}
	md.rebuilt = append(md.rebuilt, md.metaIndex)
	relocated := map[int]bool{}
	for {
		var todo []int
		for i := range md.meta.dirty {
			if !relocated[i] {
				todo = append(todo, i)
			}
		}
		if len(todo) == 0 {
			break
		}
		for _, i := range todo {
			relocated[i] = true
			if err := md.relocateBitmap(md.meta, i); err != nil {
				return err
			}
		}
	}
	for i := range relocated {
		writes[md.meta.bitmaps[i].loc] = md.meta.encodeBitmap(i)
	}
	idx := make([]byte, metaBlockSize)
	binary.LittleEndian.PutUint64(idx[8:], md.metaIndex)
	for i := range md.meta.nrBitmaps() {
		copy(idx[16+indexValueSize*i:], md.meta.entry(i))
	}
	seal(idx, indexCsumXor)
	writes[md.metaIndex] = idx

	for b, n := range md.dirty {
		writes[b] = n.encode(b)
	}
	if err := md.spaceErr(); err != nil { // a bitmap read for the allocations above failed
		return err
	}
	for _, b := range slices.Sorted(maps.Keys(writes)) {
		if _, err := md.f.WriteAt(writes[b], int64(b)*metaBlockSize); err != nil {
			return fmt.Errorf("write metadata block %d: %w", b, err)
		}
	}
	besideDone := make(chan error, 1)
	go func() { besideDone <- syncBeside() }()
	err = unix.Fdatasync(int(md.f.Fd()))
	if err := errors.Join(err, <-besideDone); err != nil {
		return err
	}
	md.lastCommitWrites = uint64(len(writes)) + 1
	sb := superblock{
		time:             md.time,
		transactionID:    md.transactionID,
		dataSM:           smRoot{md.data.size(), md.data.used(), dataIndexRoot, md.dataRefRoot},
		metaSM:           smRoot{md.meta.size(), md.meta.used(), md.metaIndex, md.metaRefRoot},
		mappingRoot:      mappingRoot,
		detailsRoot:      detailsRoot,
		dataBlockSectors: md.dataBlockSectors,
		metaNrBlocks:     md.meta.size(),
	}
	if md.needsCheck {
		sb.flags |= needsCheckFlag
	}
	if _, err := md.f.WriteAt(sb.encode(), superblockLocation); err != nil {
		return fmt.Errorf("write superblock: %w", err)
	}
	if err := unix.Fdatasync(int(md.f.Fd())); err != nil {
		return err
	}
	for b, n := range md.dirty {
		md.cache[b] = n
	}
	md.dirty = map[uint64]*node{}
	md.meta.committed()
	md.data.committed()
	md.committedTransactionID = md.transactionID
	return nil
}

// changed says whether anything differs from the last commit: every change
// but the transaction id changes a reference count.
func (md *metadata) changed() bool {
	return len(md.meta.dirty) > 0 || len(md.data.dirty) > 0 || md.transactionID != md.committedTransactionID
}

// relocateBitmap gives bitmap i of sm a new block, so that the committed one
// stays intact until the superblock names the new one.
func (md *metadata) relocateBitmap(sm *spaceMap, i int) error {
	loc, err := md.allocMeta()
	if err != nil {
		return err
	}
	if old := sm.bitmaps[i].loc; old != 0 {
		md.meta.dec(old)
	}
	sm.bitmaps[i].loc = loc
	return nil
}

func (md *metadata) rebuildRefcounts(sm *spaceMap, tree *[]uint64, writes map[uint64][]byte) (uint64, error) {
	for _, b := range *tree {
		md.release(b)
	}
	*tree = nil
	keys, values := sm.overflowEntries()
	return md.build(keys, values, refcountValueSize, writes, tree)
}

// commitReserve is the number of metadata blocks a commit may need, kept
// free so that running out of space never stops a commit.
func (md *metadata) commitReserve() uint64 {
	tree := func(entries uint64, valueSize int) uint64 {
		return 2 * (entries/uint64(maxEntries(valueSize)/2) + 2)
	}
	devs := uint64(len(md.roots))
	return tree(devs, detailsValueSize) + tree(devs, 8) +
		uint64(md.data.nrBitmaps()) + tree(uint64(md.data.nrBitmaps()), indexValueSize) +
		tree(uint64(len(md.data.overflow)), refcountValueSize) + tree(uint64(len(md.meta.overflow)), refcountValueSize) +
		uint64(md.meta.nrBitmaps()) + 1
}

// reserve fails with errNoMetaSpace unless an operation allocating a few
// metadata blocks, and the commit after it, will find them.
func (md *metadata) reserve() error {
	if err := md.spaceErr(); err != nil {
		return err
	}
	if md.meta.free() < md.commitReserve()+64 {
		return errNoMetaSpace
	}
	return nil
}

// spaceErr returns the first failure to read a space-map bitmap: the
// counts it holds are unknown, so nothing may be allocated or committed
// on their account.
func (md *metadata) spaceErr() error {
	return errors.Join(md.meta.err, md.data.err)
}
