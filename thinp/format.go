package thinp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/strata-storage/strata/errdefs"
)

// Constants of the dm-thin metadata format (kernel dm-thin-metadata.c and
// persistent-data/).
const (
	metaBlockSize      = 4096
	superblockMagic    = 27022010
	metadataVersion    = 2
	superblockCsumXor  = 160774
	nodeCsumXor        = 121107
	bitmapCsumXor      = 240779
	indexCsumXor       = 160478
	needsCheckFlag     = 1
	nodeHeaderSize     = 32
	internalNode       = 1
	leafNode           = 2
	bitmapHeaderSize   = 16
	entriesPerBitmap   = (metaBlockSize - bitmapHeaderSize) * 4 // 2 bits each
	maxMetaBitmaps     = 255                                    // entries in the metadata index block
	maxMetaBlocks      = maxMetaBitmaps * entriesPerBitmap
	minMetaBlocks      = 64
	superblockLocation = 0
	detailsValueSize   = 24 // mapped_blocks, transaction_id, creation_time, snapshotted_time
	indexValueSize     = 16 // blocknr, nr_free, none_free_before
	refcountValueSize  = 4
	mappingTimeBits    = 24
)

var (
	errNoDataSpace = fmt.Errorf("%w: no free data blocks", ErrNoSpace)
	errNoMetaSpace = fmt.Errorf("%w: no free metadata blocks", ErrNoSpace)
	errCorrupt     = errors.New("corrupt thin pool metadata")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checksum is persistent-data's dm_bm_checksum: crc32c seeded with ~0 and not
// inverted at the end, XORed with a salt per kind of block.
func checksum(b []byte, xor uint32) uint32 {
	return ^crc32.Checksum(b, castagnoli) ^ xor
}

// seal stores the checksum of block b (everything after its first 4 bytes).
func seal(b []byte, xor uint32) {
	binary.LittleEndian.PutUint32(b, checksum(b[4:], xor))
}

// verify checks the checksum and the self-reference of block b read from
// location loc.
func verify(b []byte, xor uint32, loc uint64, kind string) error {
	if binary.LittleEndian.Uint32(b) != checksum(b[4:], xor) {
		return fmt.Errorf("%w: %s block %d: bad checksum", errCorrupt, kind, loc)
	}
	if binary.LittleEndian.Uint64(b[8:]) != loc {
		return fmt.Errorf("%w: %s block %d: says it is block %d", errCorrupt, kind, loc, binary.LittleEndian.Uint64(b[8:]))
	}
	return nil
}

// maxEntries is the capacity of a B-tree node whose values are valueSize
// bytes: a multiple of 3, as the kernel's calc_max_entries computes it.
func maxEntries(valueSize int) int {
	return (metaBlockSize - nodeHeaderSize) / (8 + valueSize) / 3 * 3
}

// smRoot is struct disk_sm_root, the root of a space map in the superblock.
type smRoot struct {
	nrBlocks, nrAllocated, bitmapRoot, refcountRoot uint64
}

func (r smRoot) put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b, r.nrBlocks)
	le.PutUint64(b[8:], r.nrAllocated)
	le.PutUint64(b[16:], r.bitmapRoot)
	le.PutUint64(b[24:], r.refcountRoot)
}

func getSMRoot(b []byte) smRoot {
	le := binary.LittleEndian
	return smRoot{le.Uint64(b), le.Uint64(b[8:]), le.Uint64(b[16:]), le.Uint64(b[24:])}
}

// superblock is struct thin_disk_superblock.
type superblock struct {
	flags            uint32
	time             uint32
	transactionID    uint64
	dataSM, metaSM   smRoot
	mappingRoot      uint64
	detailsRoot      uint64
	dataBlockSectors uint32
	metaNrBlocks     uint64
}

func (s *superblock) encode() []byte {
	b := make([]byte, metaBlockSize)
	le := binary.LittleEndian
	le.PutUint32(b[4:], s.flags)
	le.PutUint64(b[8:], superblockLocation)
	// b[16:32] uuid, b[56:64] held_root: unused
	le.PutUint64(b[32:], superblockMagic)
	le.PutUint32(b[40:], metadataVersion)
	le.PutUint32(b[44:], s.time)
	le.PutUint64(b[48:], s.transactionID)
	s.dataSM.put(b[64:])
	s.metaSM.put(b[192:])
	le.PutUint64(b[320:], s.mappingRoot)
	le.PutUint64(b[328:], s.detailsRoot)
	le.PutUint32(b[336:], s.dataBlockSectors)
	le.PutUint32(b[340:], metaBlockSize/512)
	le.PutUint64(b[344:], s.metaNrBlocks)
	// compat, compat_ro and incompat flags at 352..364: none
	seal(b, superblockCsumXor)
	return b
}

func decodeSuperblock(b []byte) (*superblock, error) {
	le := binary.LittleEndian
	if le.Uint64(b[32:]) != superblockMagic {
		return nil, fmt.Errorf("%w: not a thin pool metadata file (bad magic)", errCorrupt)
	}
	if err := verify(b, superblockCsumXor, superblockLocation, "superblock"); err != nil {
		return nil, err
	}
	if v := le.Uint32(b[40:]); v < 1 || v > metadataVersion {
		return nil, fmt.Errorf("%w: metadata version %d", errCorrupt, v)
	}
	if le.Uint32(b[340:]) != metaBlockSize/512 {
		return nil, fmt.Errorf("%w: metadata block size %d sectors", errCorrupt, le.Uint32(b[340:]))
	}
	if le.Uint64(b[56:]) != 0 {
		return nil, fmt.Errorf("%w: a metadata snapshot is held", errdefs.ErrNotSupported)
	}
	if le.Uint32(b[360:]) != 0 {
		return nil, fmt.Errorf("%w: incompatible feature flags %#x", errdefs.ErrNotSupported, le.Uint32(b[360:]))
	}
	return &superblock{
		flags:            le.Uint32(b[4:]),
		time:             le.Uint32(b[44:]),
		transactionID:    le.Uint64(b[48:]),
		dataSM:           getSMRoot(b[64:]),
		metaSM:           getSMRoot(b[192:]),
		mappingRoot:      le.Uint64(b[320:]),
		detailsRoot:      le.Uint64(b[328:]),
		dataBlockSectors: le.Uint32(b[336:]),
		metaNrBlocks:     le.Uint64(b[344:]),
	}, nil
}

// deviceDetails is struct disk_device_details.
type deviceDetails struct {
	mappedBlocks    uint64
	transactionID   uint64
	creationTime    uint32
	snapshottedTime uint32
}

func (d deviceDetails) put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b, d.mappedBlocks)
	le.PutUint64(b[8:], d.transactionID)
	le.PutUint32(b[16:], d.creationTime)
	le.PutUint32(b[20:], d.snapshottedTime)
}

func getDeviceDetails(b []byte) deviceDetails {
	le := binary.LittleEndian
	return deviceDetails{le.Uint64(b), le.Uint64(b[8:]), le.Uint32(b[16:]), le.Uint32(b[20:])}
}

// Mapping values of the bottom level of the mapping tree.
func packMapping(dataBlock uint64, time uint32) uint64 {
	return dataBlock<<mappingTimeBits | uint64(time&(1<<mappingTimeBits-1))
}

func unpackMapping(v uint64) (dataBlock uint64, time uint32) {
	return v >> mappingTimeBits, uint32(v & (1<<mappingTimeBits - 1))
}
