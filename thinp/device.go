package thinp

import (
	"fmt"
	"maps"
	"slices"

	"github.com/strata-storage/strata/errdefs"
)

// Operations on thin devices, as dm-thin's pool messages and thin targets
// perform them on the metadata.

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
