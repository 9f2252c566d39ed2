// Package thinp is a thin-provisioning pool in user space whose metadata is
// the kernel dm-thin on-disk format: Debian's thin_check, thin_dump and
// thin_ls (0.9.0) accept every committed transaction, and the same files
// could be activated by a kernel with device-mapper (not verified here:
// these machines have none).
//
// On disk a pool is three files:
//
//	DATA   data block N at byte N*BlockSize (sparse, but allocated ahead
//	       of the blocks in use, 64 MiB to 1 GiB at a time; nothing else
//	       in the file), written with direct I/O where the file system has it
//	META   4 KiB metadata blocks, dm-thin format version 2:
//	  block 0          superblock: magic 27022010, crc32c^160774, transaction
//	                   id, time, data block size (sectors), roots of the trees
//	                   below and the two space-map roots; writing it is the
//	                   commit point of a transaction
//	  mapping tree     B-tree dev id -> root of that device's B-tree
//	                   vblock -> data_block<<24 | time (time = provisioning)
//	  details tree     B-tree dev id -> mapped_blocks, transaction_id,
//	                   creation_time, snapshotted_time
//	  data space map   2-bit reference counts in bitmap blocks (crc^240779),
//	                   an index B-tree of the bitmaps, a B-tree of counts > 2
//	  meta space map   the same for metadata blocks, indexed by one index
//	                   block (crc^160478) instead of a tree
//	META.sizes   the virtual size of each device, which dm-thin keeps in the
//	             device-mapper table, not in its metadata: 8 bytes at id*8,
//	             sectors<<24 | creation time (sparse)
//
// Every B-tree node (crc^121107) is copy-on-write: a transaction shadows the
// nodes it changes into blocks no committed tree uses, and frees nothing for
// reuse before it commits, so a crash before the superblock write leaves the
// previous transaction whole. Nodes carry reference counts in the metadata
// space map; a snapshot shares its origin's tree root and increments its
// count, so it costs the same whatever the origin maps. A write to a block
// provisioned before the device's last snapshot (mapping time <
// snapshotted_time, the kernel's rule) copies the whole block into a new one
// first. A commit syncs the data, the sizes and the new metadata blocks,
// then writes the superblock and syncs it.
package thinp

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/strata-storage/strata/errdefs"
	"golang.org/x/sys/unix"
)

// ErrNoSpace is returned (wrapped) when the data or metadata space is full.
var ErrNoSpace = errors.New("thin pool out of space")

const (
	// DefaultBlockSize is the data block size of a pool created without one.
	DefaultBlockSize = 64 << 10
	// DefaultDataSize and DefaultMetadataSize are the seed's sparse files.
	DefaultDataSize     = 100 << 30
	DefaultMetadataSize = 2 << 30
	// MaxDeviceID is the largest thin device id (ids are 24 bits).
	MaxDeviceID = 1<<24 - 1
)

// Options configures a new pool; zero fields take the defaults.
type Options struct {
	BlockSize    int64 // data block bytes: 64 KiB..1 MiB, a multiple of 64 KiB
	DataSize     int64 // data file bytes
	MetadataSize int64 // metadata file bytes
}

// Status is a pool's state, as dm-thin's status line and thin_ls report it.
type Status struct {
	TransactionID        uint64
	BlockSize            int64
	UsedData, TotalData  uint64 // data blocks
	UsedMeta, TotalMeta  uint64 // metadata blocks (4 KiB)
	NeedsCheck           bool
	OutOfData, OutOfMeta bool // an allocation failed for lack of space, and no commit or grow has made room since
	Devices              []DeviceStatus
}

// DeviceStatus describes one thin device.
type DeviceStatus struct {
	ID           uint32
	Size         int64  // virtual bytes
	MappedBlocks uint64 // data blocks mapped
	Exclusive    uint64 // mapped blocks no other device maps
	Shared       uint64 // mapped blocks shared with another device
	CreationTime uint32
	SnapshotTime uint32
}

// Pool is an open thin pool. Its methods are safe for concurrent use.
type Pool struct {
	// io is held shared by reads, writes and discards for their whole
	// duration and exclusively by commits and by everything else that
	// frees data blocks, so no write lands in a block that has been
	// unmapped and handed out again under it (a transaction's freed blocks
	// are handed out after its commit).
	io sync.RWMutex
	// mu guards the metadata: held briefly, never across data copies.
	mu sync.Mutex
	md *metadata
	// provisioning holds, per block being provisioned outside mu, the
	// channel closed when its mapping is inserted.
	provisioning map[blockKey]chan struct{}
	data         *dataFile
	blockSize    int64
	sizes        map[uint32]int64 // virtual size of each device
	sizeTable    *sizeTable
	unsynced     atomic.Bool // data written since the last data file sync
	outOfData    bool
	outOfMeta    bool
}

type blockKey struct {
	dev    uint32
	vblock uint64
}

// Create makes a new pool in a metadata and a data file, which must not
// exist yet; both are created sparse at their full size, the sizes file
// (metaPath + ".sizes") beside them.
func Create(metaPath, dataPath string, opts Options) (*Pool, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = DefaultBlockSize
	}
	if opts.DataSize == 0 {
		opts.DataSize = DefaultDataSize
	}
	if opts.MetadataSize == 0 {
		opts.MetadataSize = DefaultMetadataSize
	}
	if opts.BlockSize < 64<<10 || opts.BlockSize > 1<<20 || opts.BlockSize%(64<<10) != 0 {
		return nil, fmt.Errorf("%w: data block size %d: want 64 KiB..1 MiB, a multiple of 64 KiB", errdefs.ErrInvalid, opts.BlockSize)
	}
	if opts.DataSize < opts.BlockSize {
		return nil, fmt.Errorf("%w: data size %d is less than one block", errdefs.ErrInvalid, opts.DataSize)
	}
	if opts.MetadataSize < minMetaBlocks*metaBlockSize {
		return nil, fmt.Errorf("%w: metadata size %d: want at least %d", errdefs.ErrInvalid, opts.MetadataSize, minMetaBlocks*metaBlockSize)
	}
	for _, p := range []string{metaPath, dataPath} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("create pool: %s: %w", p, errdefs.ErrExists)
		}
	}
	data, err := openDataFile(dataPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create pool: %w", err)
	}
	if err := data.Truncate(opts.DataSize); err != nil {
		data.Close()
		return nil, fmt.Errorf("create pool: %w", err)
	}
	md, err := createMetadata(metaPath, opts.MetadataSize, uint64(opts.DataSize/opts.BlockSize), uint32(opts.BlockSize/512))
	if err != nil {
		data.Close()
		os.Remove(dataPath)
		return nil, fmt.Errorf("create pool: %w", err)
	}
	sizes, err := openSizeTable(metaPath+".sizes", os.O_CREATE|os.O_TRUNC)
	if err != nil {
		md.close()
		data.Close()
		return nil, fmt.Errorf("create pool: %w", err)
	}
	return newPool(md, data, opts.BlockSize, sizes), nil
}

// Open opens the last committed transaction of an existing pool.
func Open(metaPath, dataPath string) (*Pool, error) {
	md, err := openMetadata(metaPath)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	data, err := openDataFile(dataPath, os.O_RDWR, 0)
	if err != nil {
		md.close()
		return nil, fmt.Errorf("open pool: %w", err)
	}
	blockSize := int64(md.dataBlockSectors) * 512
	if fi, err := data.Stat(); err != nil || fi.Size() < int64(md.data.size())*blockSize {
		md.close()
		data.Close()
		return nil, fmt.Errorf("open pool: %w: data file %s is smaller than the %d blocks of %d bytes the metadata holds", errdefs.ErrInvalid, dataPath, md.data.size(), blockSize)
	}
	sizes, err := openSizeTable(metaPath+".sizes", os.O_CREATE)
	if err != nil {
		md.close()
		data.Close()
		return nil, fmt.Errorf("open pool: %w", err)
	}
	p := newPool(md, data, blockSize, sizes)
	for _, id := range md.devices() {
		if p.sizes[id], err = sizes.load(id, md.details[id].creationTime); err != nil {
			md.close()
			data.Close()
			sizes.close()
			return nil, fmt.Errorf("open pool: %w", err)
		}
	}
	return p, nil
}

func newPool(md *metadata, data *dataFile, blockSize int64, sizes *sizeTable) *Pool {
	return &Pool{
		md:           md,
		data:         data,
		blockSize:    blockSize,
		sizes:        map[uint32]int64{},
		sizeTable:    sizes,
		provisioning: map[blockKey]chan struct{}{},
	}
}

// Close commits and closes the pool.
func (p *Pool) Close() error {
	err := p.Commit()
	p.io.Lock()
	defer p.io.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.md == nil {
		return err
	}
	err = errors.Join(err, p.md.close(), p.data.Close(), p.sizeTable.close())
	p.md = nil
	return err
}

// CreateThin creates an empty thin device of size bytes.
func (p *Pool) CreateThin(id uint32, size int64) error {
	if id > MaxDeviceID || !validSize(size) {
		return fmt.Errorf("%w: create thin %d of %d bytes: want an id up to %d, a size in 512-byte sectors", errdefs.ErrInvalid, id, size, MaxDeviceID)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.md.createThin(id); err != nil {
		return p.noteSpace(fmt.Errorf("create thin %d: %w", id, err))
	}
	p.sizes[id] = size
	return nil
}

// CreateSnap creates device id as a snapshot of origin, sharing all of its
// blocks. Writes to origin in flight finish first; quiescing the file system
// on the origin is the caller's job.
func (p *Pool) CreateSnap(id, origin uint32) error {
	if id > MaxDeviceID {
		return fmt.Errorf("%w: create snap %d: id above %d", errdefs.ErrInvalid, id, MaxDeviceID)
	}
	p.io.Lock()
	defer p.io.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.md.createSnap(id, origin); err != nil {
		return p.noteSpace(fmt.Errorf("create snap %d of %d: %w", id, origin, err))
	}
	p.sizes[id] = p.sizes[origin]
	return nil
}

// Delete removes a device and releases the blocks only it mapped.
func (p *Pool) Delete(id uint32) error {
	p.io.Lock()
	defer p.io.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.md.deleteDevice(id); err != nil {
		return p.noteSpace(fmt.Errorf("delete %d: %w", id, err))
	}
	delete(p.sizes, id)
	return nil
}

// SetTransactionID sets the pool's transaction id to new if it is old, as
// dm-thin's set_transaction_id message does.
func (p *Pool) SetTransactionID(old, new uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.md.transactionID != old {
		return fmt.Errorf("%w: set transaction id: current is %d, not %d", errdefs.ErrInvalid, p.md.transactionID, old)
	}
	p.md.transactionID = new
	return nil
}

// Commit makes everything written so far durable: it syncs the data file,
// writes the changed metadata and then the superblock.
func (p *Pool) Commit() error {
	p.io.Lock()
	defer p.io.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.md == nil {
		return fmt.Errorf("commit: pool is closed")
	}
	if !p.md.changed() {
		if err := p.syncBeside(); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		return nil
	}
	if err := p.md.commit(p.syncBeside); err != nil {
		return p.noteSpace(fmt.Errorf("commit: %w", err))
	}
	// Blocks freed by the transaction are free now.
	p.outOfData = p.outOfData && p.md.data.free() == 0
	p.outOfMeta = p.outOfMeta && p.md.reserve() != nil
	return nil
}

// syncBeside makes what the next superblock relies on outside the
// metadata file durable: the data written and the device sizes.
func (p *Pool) syncBeside() error {
	if p.unsynced.Swap(false) {
		if err := unix.Fdatasync(int(p.data.Fd())); err != nil {
			p.unsynced.Store(true)
			return fmt.Errorf("sync data: %w", err)
		}
	}
	return p.sizeTable.save(p.sizes, func(id uint32) uint32 { return p.md.details[id].creationTime })
}

// noteSpace records an exhausted space for Status.
func (p *Pool) noteSpace(err error) error {
	switch {
	case errors.Is(err, errNoDataSpace):
		p.outOfData = true
	case errors.Is(err, errNoMetaSpace):
		p.outOfMeta = true
	}
	return err
}

// Status reports the pool and every device. It walks every mapping tree
// to tell shared from exclusive blocks: not for the I/O path.
func (p *Pool) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.usage()
	for _, id := range p.md.devices() {
		d, err := p.md.deviceStatus(id)
		if err != nil {
			s.NeedsCheck = true
			continue
		}
		d.Size = p.sizes[id]
		s.Devices = append(s.Devices, d)
	}
	return s
}

// Usage reports the pool as Status does but without its devices (Devices
// is nil): the space maps' counters alone, cheap enough to ask before every
// new device.
func (p *Pool) Usage() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.usage()
}

func (p *Pool) usage() Status {
	return Status{
		TransactionID: p.md.transactionID,
		BlockSize:     p.blockSize,
		UsedData:      p.md.data.used(),
		TotalData:     p.md.data.size(),
		UsedMeta:      p.md.meta.used(),
		TotalMeta:     p.md.meta.size(),
		NeedsCheck:    p.md.needsCheck || p.md.meta.errors+p.md.data.errors > 0 || p.md.spaceErr() != nil,
		OutOfData:     p.outOfData,
		OutOfMeta:     p.outOfMeta,
	}
}

// Devices returns the ids of all thin devices, in order.
func (p *Pool) Devices() []uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.md.devices()
}

// DeviceSize returns the virtual size of a device.
func (p *Pool) DeviceSize(id uint32) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	size, ok := p.sizes[id]
	if !ok {
		return 0, fmt.Errorf("thin device %d: %w", id, errdefs.ErrNotFound)
	}
	return size, nil
}

// SetDeviceSize sets the virtual size of a device, as loading a thin target
// of another length does: for pools whose metadata came from elsewhere (the
// kernel, thin_restore), which have no sizes file, and to grow a device.
// Blocks mapped past a smaller size stay mapped.
func (p *Pool) SetDeviceSize(id uint32, size int64) error {
	if !validSize(size) {
		return fmt.Errorf("%w: thin device %d: size %d: want a size in 512-byte sectors", errdefs.ErrInvalid, id, size)
	}
	p.io.Lock()
	defer p.io.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, _, err := p.md.device(id); err != nil {
		return err
	}
	p.sizes[id] = size
	return nil
}

func validSize(size int64) bool { return size > 0 && size%512 == 0 && size <= maxDeviceSize }

// GrowData extends the data file to size bytes; the new blocks are usable at
// once.
func (p *Pool) GrowData(size int64) error {
	p.io.Lock()
	defer p.io.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	blocks := uint64(size / p.blockSize)
	if blocks < p.md.data.size() {
		return fmt.Errorf("%w: grow data to %d bytes: the pool has %d", errdefs.ErrInvalid, size, int64(p.md.data.size())*p.blockSize)
	}
	if err := p.data.Truncate(int64(blocks) * p.blockSize); err != nil {
		return fmt.Errorf("grow data: %w", err)
	}
	if err := p.md.growData(blocks); err != nil {
		return fmt.Errorf("grow data: %w", err)
	}
	p.outOfData = false
	return nil
}

// GrowMetadata extends the metadata file to size bytes; the new blocks are
// usable at once.
func (p *Pool) GrowMetadata(size int64) error {
	p.io.Lock()
	defer p.io.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.md.growMeta(uint64(size / metaBlockSize)); err != nil {
		return fmt.Errorf("grow metadata: %w", err)
	}
	p.outOfMeta = false
	return nil
}
