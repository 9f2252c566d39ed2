package thinp

import (
	"encoding/binary"
	"errors"
	"fmt"
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

	// Metadata space map: one index block.
	md.metaIndex = sb.metaSM.bitmapRoot
	idx, err := md.readBlock(md.metaIndex)
	if err != nil {
		return err
	}
	if err := verify(idx, indexCsumXor, md.metaIndex, "space map index"); err != nil {
		return err
	}
	var metaEntries [][]byte
	for i := range (sb.metaSM.nrBlocks + entriesPerBitmap - 1) / entriesPerBitmap {
		metaEntries = append(metaEntries, idx[16+indexValueSize*i:16+indexValueSize*(i+1)])
	}
	md.metaRefRoot = sb.metaSM.refcountRoot
	overflow, err := md.loadRefcounts(sb.metaSM.nrBlocks, md.metaRefRoot, &md.metaRefTree)
	if err != nil {
		return err
	}
	md.meta = openSpaceMap(sb.metaSM.nrBlocks, metaEntries, overflow, md.readBitmap)

	// Data space map: an index tree.
	dataEntries := make([][]byte, (sb.dataSM.nrBlocks+entriesPerBitmap-1)/entriesPerBitmap)
	err = md.walkRaw(sb.dataSM.bitmapRoot, indexValueSize, &md.rebuilt, func(k uint64, v []byte) error {
		if k >= uint64(len(dataEntries)) {
			return fmt.Errorf("%w: data bitmap %d beyond the end", errCorrupt, k)
		}
		dataEntries[k] = v
		return nil
	})
	if err != nil {
		return err
	}
	if i := slices.IndexFunc(dataEntries, func(e []byte) bool { return e == nil }); i >= 0 {
		return fmt.Errorf("%w: data bitmap %d missing from the index", errCorrupt, i)
	}
	md.dataRefRoot = sb.dataSM.refcountRoot
	if overflow, err = md.loadRefcounts(sb.dataSM.nrBlocks, md.dataRefRoot, &md.dataRefTree); err != nil {
		return err
	}
	md.data = openSpaceMap(sb.dataSM.nrBlocks, dataEntries, overflow, md.readBitmap)

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

// readBitmap reads and checks the space-map bitmap block at loc.
func (md *metadata) readBitmap(loc uint64) ([]byte, error) {
	b, err := md.readBlock(loc)
	if err != nil {
		return nil, err
	}
	if err := verify(b, bitmapCsumXor, loc, "space map bitmap"); err != nil {
		return nil, err
	}
	return b, nil
}

// loadRefcounts reads a reference-count tree: the counts above 2 of a
// space of nrBlocks.
func (md *metadata) loadRefcounts(nrBlocks, root uint64, blocks *[]uint64) (map[uint64]uint32, error) {
	counts := map[uint64]uint32{}
	err := md.walkRaw(root, refcountValueSize, blocks, func(k uint64, v []byte) error {
		c := binary.LittleEndian.Uint32(v)
		if k >= nrBlocks || c < 3 {
			return fmt.Errorf("%w: reference count tree names block %d with count %d", errCorrupt, k, c)
		}
		counts[k] = c
		return nil
	})
	return counts, err
}
