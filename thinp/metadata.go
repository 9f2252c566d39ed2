package thinp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/strata-storage/strata/errdefs"
	"golang.org/x/sys/unix"
)

// metadata is the pool's metadata in memory and its transactions on the
// metadata file. Callers serialize access.
type metadata struct {
	f                *os.File
	dataBlockSectors uint32
	transactionID    uint64
	time             uint32
	needsCheck       bool
	meta, data       *spaceMap
	roots            map[uint32]uint64 // device -> mapping tree root
	details          map[uint32]*deviceDetails
	dirty            map[uint64]*node // mapping-tree nodes written by this transaction
	cache            map[uint64]*node // clean nodes
	// Blocks of the trees rewritten whole: rebuilt at every commit, the
	// reference-count trees only when a count above 2 changed.
	rebuilt                  []uint64
	dataRefTree, metaRefTree []uint64
	dataRefRoot, metaRefRoot uint64
	dataEntries, metaEntries [][]byte // index entry of each bitmap
	metaIndex                uint64
	committedTransactionID   uint64
	metaAllocs               uint64 // metadata blocks allocated, for tests
	lastCommitWrites         uint64 // metadata blocks the last commit wrote
}

func createMetadata(path string, size int64, dataBlocks uint64, dataBlockSectors uint32) (*metadata, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lock(f); err != nil {
		f.Close()
		return nil, err
	}
	nr := min(uint64(size)/metaBlockSize, maxMetaBlocks)
	md := &metadata{
		f:                f,
		dataBlockSectors: dataBlockSectors,
		meta:             newSpaceMap(nr),
		data:             newSpaceMap(dataBlocks),
		roots:            map[uint32]uint64{},
		details:          map[uint32]*deviceDetails{},
		dirty:            map[uint64]*node{},
		cache:            map[uint64]*node{},
	}
	md.meta.inc(superblockLocation)
	md.meta.overflowDirty, md.data.overflowDirty = true, true // write the empty trees
	err = f.Truncate(int64(nr) * metaBlockSize)
	if err == nil {
		err = md.commit(func() error { return nil })
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return md, nil
}

func openMetadata(path string) (*metadata, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	if err := lock(f); err != nil {
		f.Close()
		return nil, err
	}
	md := &metadata{
		f:       f,
		roots:   map[uint32]uint64{},
		details: map[uint32]*deviceDetails{},
		dirty:   map[uint64]*node{},
		cache:   map[uint64]*node{},
	}
	if err := md.load(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return md, nil
}

// lock takes the metadata file for this process: two pools on the same
// files would overwrite each other's transactions.
func lock(f *os.File) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%s: pool open in another process: %w", f.Name(), errdefs.ErrInUse)
		}
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return nil
}

func (md *metadata) close() error { return md.f.Close() }

func (md *metadata) readBlock(b uint64) ([]byte, error) {
	buf := make([]byte, metaBlockSize)
	if _, err := md.f.ReadAt(buf, int64(b)*metaBlockSize); err != nil {
		return nil, fmt.Errorf("read metadata block %d: %w", b, err)
	}
	return buf, nil
}

func (md *metadata) allocMeta() (uint64, error) {
	b, ok := md.meta.alloc()
	if !ok {
		return 0, errNoMetaSpace
	}
	md.metaAllocs++
	return b, nil
}

// load reads the last committed transaction.
func (md *metadata) load() error {
	buf, err := md.readBlock(superblockLocation)
	if err != nil {
		return err
	}
	sb, err := decodeSuperblock(buf)
	if err != nil {
		return err
	}
	md.dataBlockSectors = sb.dataBlockSectors
	md.transactionID = sb.transactionID
	md.committedTransactionID = sb.transactionID
	md.time = sb.time
	md.needsCheck = sb.flags&needsCheckFlag != 0
	if sb.metaSM.nrBlocks > maxMetaBlocks {
		return fmt.Errorf("%w: %d metadata blocks", errCorrupt, sb.metaSM.nrBlocks)
	}
	md.meta = newSpaceMap(sb.metaSM.nrBlocks)
	md.data = newSpaceMap(sb.dataSM.nrBlocks)

	// Metadata space map: one index block.
	md.metaIndex = sb.metaSM.bitmapRoot
	idx, err := md.readBlock(md.metaIndex)
	if err != nil {
		return err
	}
	if err := verify(idx, indexCsumXor, md.metaIndex, "space map index"); err != nil {
		return err
	}
	for i := range md.meta.nrBitmaps() {
		entry := idx[16+indexValueSize*i : 16+indexValueSize*(i+1)]
		if err := md.loadBitmap(md.meta, i, entry); err != nil {
			return err
		}
		md.metaEntries = append(md.metaEntries, slices.Clone(entry))
	}
	md.metaRefRoot = sb.metaSM.refcountRoot
	if err := md.loadRefcounts(md.meta, md.metaRefRoot, &md.metaRefTree); err != nil {
		return err
	}

	// Data space map: an index tree.
	md.dataEntries = make([][]byte, md.data.nrBitmaps())
	err = md.walkRaw(sb.dataSM.bitmapRoot, indexValueSize, &md.rebuilt, func(k uint64, v []byte) error {
		if k >= uint64(len(md.dataEntries)) {
			return fmt.Errorf("%w: data bitmap %d beyond the end", errCorrupt, k)
		}
		md.dataEntries[k] = slices.Clone(v)
		return md.loadBitmap(md.data, int(k), v)
	})
	if err != nil {
		return err
	}
	if i := slices.IndexFunc(md.dataEntries, func(e []byte) bool { return e == nil }); i >= 0 {
		return fmt.Errorf("%w: data bitmap %d missing from the index", errCorrupt, i)
	}
	md.dataRefRoot = sb.dataSM.refcountRoot
	if err := md.loadRefcounts(md.data, md.dataRefRoot, &md.dataRefTree); err != nil {
		return err
	}
	md.meta.dirty, md.data.dirty = map[int]bool{}, map[int]bool{}

	// Devices and their details.
	err = md.walkRaw(sb.mappingRoot, 8, &md.rebuilt, func(k uint64, v []byte) error {
		md.roots[uint32(k)] = binary.LittleEndian.Uint64(v)
		return nil
	})
	if err != nil {
		return err
	}
	err = md.walkRaw(sb.detailsRoot, detailsValueSize, &md.rebuilt, func(k uint64, v []byte) error {
		d := getDeviceDetails(v)
		md.details[uint32(k)] = &d
		return nil
	})
	if err != nil {
		return err
	}
	for id := range md.roots {
		if md.details[id] == nil {
			return fmt.Errorf("%w: device %d has no details", errCorrupt, id)
		}
	}
	md.rebuilt = append(md.rebuilt, md.metaIndex)
	return nil
}

func (md *metadata) loadBitmap(sm *spaceMap, i int, entry []byte) error {
	loc := binary.LittleEndian.Uint64(entry)
	b, err := md.readBlock(loc)
	if err != nil {
		return err
	}
	if err := verify(b, bitmapCsumXor, loc, "space map bitmap"); err != nil {
		return err
	}
	sm.bitmaps[i] = loc
	sm.decodeBitmap(i, b)
	return nil
}

func (md *metadata) loadRefcounts(sm *spaceMap, root uint64, blocks *[]uint64) error {
	return md.walkRaw(root, refcountValueSize, blocks, func(k uint64, v []byte) error {
		if k >= sm.size() || sm.counts[k] != 3 {
			return fmt.Errorf("%w: reference count tree names block %d", errCorrupt, k)
		}
		sm.counts[k] = binary.LittleEndian.Uint32(v)
		return nil
	})
}

// commit writes the transaction: the dirty mapping-tree nodes, new device
// and details trees, the changed space-map blocks, then the superblock.
// syncBeside, which makes durable what the transaction needs outside the
// metadata file, runs while those blocks are synced.
func (md *metadata) commit(syncBeside func() error) error {
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
	md.dataEntries = append(md.dataEntries, make([][]byte, md.data.nrBitmaps()-len(md.dataEntries))...)
	for _, i := range slices.Sorted(maps.Keys(md.data.dirty)) {
		if err := md.relocateBitmap(md.data, i); err != nil {
			return err
		}
		var block []byte
		block, md.dataEntries[i] = md.data.encodeBitmap(i, md.data.bitmaps[i])
		writes[md.data.bitmaps[i]] = block
	}
	indexKeys := make([]uint64, len(md.dataEntries))
	for i := range indexKeys {
		indexKeys[i] = uint64(i)
	}
	dataIndexRoot, err := md.build(indexKeys, slices.Concat(md.dataEntries...), indexValueSize, writes, &md.rebuilt)
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
	md.metaEntries = append(md.metaEntries, make([][]byte, md.meta.nrBitmaps()-len(md.metaEntries))...)
	for i := range relocated {
		var block []byte
		block, md.metaEntries[i] = md.meta.encodeBitmap(i, md.meta.bitmaps[i])
		writes[md.meta.bitmaps[i]] = block
	}
	idx := make([]byte, metaBlockSize)
	binary.LittleEndian.PutUint64(idx[8:], md.metaIndex)
	copy(idx[16:], slices.Concat(md.metaEntries...))
	seal(idx, indexCsumXor)
	writes[md.metaIndex] = idx

	for b, n := range md.dirty {
		writes[b] = n.encode(b)
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
	if old := sm.bitmaps[i]; old != 0 {
		md.meta.dec(old)
	}
	sm.bitmaps[i] = loc
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
		tree(md.data.overflow, refcountValueSize) + tree(md.meta.overflow, refcountValueSize) +
		uint64(md.meta.nrBitmaps()) + 1
}

// reserve fails with errNoMetaSpace unless an operation allocating a few
// metadata blocks, and the commit after it, will find them.
func (md *metadata) reserve() error {
	if md.meta.free() < md.commitReserve()+64 {
		return errNoMetaSpace
	}
	return nil
}

func (md *metadata) devices() []uint32 {
	return slices.Sorted(maps.Keys(md.roots))
}

func (md *metadata) device(id uint32) (uint64, *deviceDetails, error) {
	root, ok := md.roots[id]
	if !ok {
		return 0, nil, fmt.Errorf("thin device %d: %w", id, errdefs.ErrNotFound)
	}
	return root, md.details[id], nil
}

func (md *metadata) createThin(id uint32) error {
	if _, ok := md.roots[id]; ok {
		return fmt.Errorf("thin device %d: %w", id, errdefs.ErrExists)
	}
	if err := md.reserve(); err != nil {
		return err
	}
	root, err := md.newNode(&node{})
	if err != nil {
		return err
	}
	md.roots[id] = root
	md.details[id] = &deviceDetails{transactionID: md.transactionID, creationTime: md.time, snapshottedTime: md.time}
	return nil
}

// createSnap shares origin's mapping tree with the new device id: one
// reference more on its root, whatever the tree holds.
func (md *metadata) createSnap(id, origin uint32) error {
	if _, ok := md.roots[id]; ok {
		return fmt.Errorf("thin device %d: %w", id, errdefs.ErrExists)
	}
	root, od, err := md.device(origin)
	if err != nil {
		return err
	}
	if err := md.reserve(); err != nil {
		return err
	}
	md.meta.inc(root)
	md.roots[id] = root
	md.time++
	od.snapshottedTime = md.time
	md.details[id] = &deviceDetails{mappedBlocks: od.mappedBlocks, transactionID: md.transactionID, creationTime: md.time, snapshottedTime: md.time}
	return nil
}

func (md *metadata) deleteDevice(id uint32) error {
	root, _, err := md.device(id)
	if err != nil {
		return err
	}
	if err := md.dropRef(root); err != nil {
		md.needsCheck = true
		return err
	}
	delete(md.roots, id)
	delete(md.details, id)
	return nil
}

// mapping returns the data block mapped at vblock of device id and whether
// a write must copy it first: it was provisioned before the device's last
// snapshot (the kernel's rule, which needs no reference counts).
func (md *metadata) mapping(id uint32, vblock uint64) (dataBlock uint64, mapped, shared bool, err error) {
	root, d, err := md.device(id)
	if err != nil {
		return 0, false, false, err
	}
	v, ok, err := md.lookup(root, vblock)
	if err != nil || !ok {
		return 0, false, false, err
	}
	dataBlock, t := unpackMapping(v)
	return dataBlock, true, t < d.snapshottedTime, nil
}

// allocData takes a free data block.
func (md *metadata) allocData() (uint64, error) {
	b, ok := md.data.alloc()
	if !ok {
		return 0, errNoDataSpace
	}
	return b, nil
}

// setMapping maps vblock of device id to dataBlock, whose reference it takes.
func (md *metadata) setMapping(id uint32, vblock, dataBlock uint64) error {
	root, d, err := md.device(id)
	if err != nil {
		return err
	}
	if err := md.reserve(); err != nil {
		return err
	}
	root, added, err := md.insert(root, vblock, packMapping(dataBlock, md.time))
	if err != nil {
		md.needsCheck = true
		return err
	}
	md.roots[id] = root
	if added {
		d.mappedBlocks++
	}
	return nil
}

// unmap removes the mappings of device id in [lo, hi).
func (md *metadata) unmap(id uint32, lo, hi uint64) error {
	root, d, err := md.device(id)
	if err != nil {
		return err
	}
	var keys []uint64
	if err := md.walk(root, lo, hi, false, func(k, _ uint64, _ bool) { keys = append(keys, k) }); err != nil {
		return err
	}
	for _, k := range keys {
		if err := md.reserve(); err != nil {
			return err
		}
		if root, err = md.remove(root, k); err != nil {
			md.needsCheck = true
			return err
		}
		md.roots[id] = root
		d.mappedBlocks--
	}
	return nil
}

func (md *metadata) deviceStatus(id uint32) (DeviceStatus, error) {
	root, d, err := md.device(id)
	if err != nil {
		return DeviceStatus{}, err
	}
	s := DeviceStatus{ID: id, MappedBlocks: d.mappedBlocks, CreationTime: d.creationTime, SnapshotTime: d.snapshottedTime}
	err = md.walk(root, 0, ^uint64(0), false, func(_, v uint64, shared bool) {
		db, _ := unpackMapping(v)
		if shared || md.data.count(db) > 1 {
			s.Shared++
		} else {
			s.Exclusive++
		}
	})
	return s, err
}

func (md *metadata) growData(blocks uint64) error {
	if blocks > md.data.size() {
		md.data.grow(blocks)
	}
	return nil
}

func (md *metadata) growMeta(blocks uint64) error {
	if blocks < md.meta.size() {
		return fmt.Errorf("%w: %d metadata blocks is less than the %d the pool has", errdefs.ErrInvalid, blocks, md.meta.size())
	}
	if blocks > maxMetaBlocks {
		return fmt.Errorf("%w: %d metadata blocks: at most %d", errdefs.ErrInvalid, blocks, maxMetaBlocks)
	}
	if err := md.f.Truncate(int64(blocks) * metaBlockSize); err != nil {
		return err
	}
	md.meta.grow(blocks)
	return nil
}
