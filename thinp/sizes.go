package thinp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// maxDeviceSize is the largest virtual size a size record holds: 2^40
// sectors.
const maxDeviceSize = 1 << 40 * 512

// sizeTable is the file META.sizes. dm-thin keeps the virtual size of a
// thin device in the device-mapper table, not in its metadata, so the pool
// keeps it beside: the 8 bytes at id*8 (a sparse file) hold device id's
// size in 512-byte sectors << 24 | the device's creation time. Records are
// written in place before the superblock; the creation time tells a record
// from that of an earlier device with the same id.
type sizeTable struct {
	f     *os.File
	saved map[uint32]int64 // as the file has them
}

func openSizeTable(path string, flag int) (*sizeTable, error) {
	f, err := os.OpenFile(path, os.O_RDWR|flag, 0o600)
	if err != nil {
		return nil, err
	}
	return &sizeTable{f: f, saved: map[uint32]int64{}}, nil
}

// load returns the size recorded for device id created at creationTime,
// or 0 when there is none.
func (t *sizeTable) load(id, creationTime uint32) (int64, error) {
	b := make([]byte, 8)
	if _, err := t.f.ReadAt(b, int64(id)*8); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	v := binary.LittleEndian.Uint64(b)
	if uint32(v&(1<<24-1)) != creationTime&(1<<24-1) {
		return 0, nil
	}
	size := int64(v>>24) * 512
	t.saved[id] = size
	return size, nil
}

// save writes the records of the devices whose sizes changed and syncs them.
func (t *sizeTable) save(sizes map[uint32]int64, creationTime func(uint32) uint32) error {
	changed := false
	for _, id := range slices.Sorted(maps.Keys(sizes)) {
		size := sizes[id]
		if old, ok := t.saved[id]; ok && old == size {
			continue
		}
		b := binary.LittleEndian.AppendUint64(nil, uint64(size/512)<<24|uint64(creationTime(id)&(1<<24-1)))
		if _, err := t.f.WriteAt(b, int64(id)*8); err != nil {
			return fmt.Errorf("write device sizes: %w", err)
		}
		changed = true
	}
	if changed {
		if err := unix.Fdatasync(int(t.f.Fd())); err != nil {
			return fmt.Errorf("sync device sizes: %w", err)
		}
	}
	clear(t.saved)
	for id, size := range sizes {
		t.saved[id] = size
	}
	return nil
}

func (t *sizeTable) close() error { return t.f.Close() }
