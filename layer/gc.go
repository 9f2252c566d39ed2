package layer

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/errdefs"
)

// Garbage collection deletes records in one transaction and queues their
// driver layers in the trash bucket; Sweep removes them from the driver after
// the commit and only then forgets them. A crash at any point leaves either a
// live record or a trash entry that the next Sweep finishes: never a record
// whose data is gone, nor data nobody knows about.
//
// Finding unreachable layers reads every image, which store.Open cannot
// afford on every command. So whatever makes layers unreachable collects
// them in the same transaction (Collect, as Release and image removal do)
// or marks the collection due (Due) before; Recover then only looks for
// dead leases, that mark and the trash.

var (
	bucketTrash = []byte("trash")
	bucketGC    = []byte("gc")
	keyDue      = []byte("due") // in bucketGC: a collection is due
)

// trashItem is a driver layer waiting for removal, with the chain ID whose
// tar-split goes with it ("" for a layer that was never recorded).
type trashItem struct {
	CacheID string        `json:"cacheID"`
	ChainID digest.Digest `json:"chainID,omitempty"`
}

func addTrash(tx *bolt.Tx, item trashItem) error {
	b, err := tx.CreateBucketIfNotExists(bucketTrash)
	if err != nil {
		return err
	}
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	v, err := json.Marshal(item)
	if err != nil {
		return err
	}
	return b.Put(binary.BigEndian.AppendUint64(nil, seq), v)
}

// GC deletes the layers that no image and no live lease reaches, and what
// dead leases left behind. It returns the chain IDs deleted, children first.
// It looks in a read-only transaction first and writes only when there is
// something to delete.
func (s *Store) GC() ([]digest.Digest, error) {
	return s.collect(func(tx *bolt.Tx) (bool, error) {
		held, dead, err := s.scanLeases(tx, false)
		if err != nil || dead {
			return true, err
		}
		unreached, err := s.unreachable(tx, held)
		return len(unreached) > 0, err
	})
}

// Recover collects when a lease is dead or a collection is due, and
// removes the driver layers in the trash: what a crashed process left. It
// reads no image and writes nothing when there is nothing to do, as
// store.Open runs it for every command.
func (s *Store) Recover() error {
	_, err := s.collect(func(tx *bolt.Tx) (bool, error) {
		if b := tx.Bucket(bucketGC); b != nil && b.Get(keyDue) != nil {
			return true, nil
		}
		_, dead, err := s.scanLeases(tx, false)
		return dead, err
	})
	return err
}

// collect runs Collect if needed, as it tells in a read-only transaction,
// then Sweep.
func (s *Store) collect(needed func(tx *bolt.Tx) (bool, error)) ([]digest.Digest, error) {
	var dirty bool
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		dirty, err = needed(tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	var deleted []digest.Digest
	if dirty {
		err = s.db.Update(func(tx *bolt.Tx) (err error) {
			deleted, err = s.Collect(tx)
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return deleted, s.Sweep()
}

// Due marks a collection due in tx, for callers about to make layers
// unreachable without collecting them in the same transaction: the next
// GC or Recover collects them even if the caller dies first.
func Due(tx *bolt.Tx) error {
	b, err := tx.CreateBucketIfNotExists(bucketGC)
	if err != nil {
		return err
	}
	return b.Put(keyDue, []byte{1})
}

// Collect is the transactional half of GC, for callers that change what
// holds layers in the same transaction (e.g. deleting an image): it deletes
// dead leases and unreachable layer records in tx and queues their driver
// layers for Sweep, which the caller runs after the commit.
func (s *Store) Collect(tx *bolt.Tx) ([]digest.Digest, error) {
	held, _, err := s.scanLeases(tx, true)
	if err != nil {
		return nil, err
	}
	dead, err := s.unreachable(tx, held)
	if err != nil {
		return nil, err
	}
	if b := tx.Bucket(bucketGC); b != nil {
		if err := b.Delete(keyDue); err != nil {
			return nil, err
		}
	}
	deleted := make([]digest.Digest, 0, len(dead))
	for _, l := range dead {
		if err := tx.Bucket(bucketLayers).Delete([]byte(l.ChainID)); err != nil {
			return nil, err
		}
		if err := addTrash(tx, trashItem{CacheID: l.CacheID, ChainID: l.ChainID}); err != nil {
			return nil, err
		}
		deleted = append(deleted, l.ChainID)
	}
	return deleted, nil
}

// unreachable returns the layers recorded in tx that neither the held
// chain IDs nor the roots reach by parent links, children first.
func (s *Store) unreachable(tx *bolt.Tx, held []digest.Digest) ([]Layer, error) {
	roots := held
	if s.roots != nil {
		images, err := s.roots(tx)
		if err != nil {
			return nil, err
		}
		roots = append(roots, images...)
	}
	layers, err := all(tx)
	if err != nil {
		return nil, err
	}
	byChain := make(map[digest.Digest]Layer, len(layers))
	for _, l := range layers {
		byChain[l.ChainID] = l
	}
	live := map[digest.Digest]bool{}
	for _, r := range roots {
		for c := r; c != "" && !live[c]; c = byChain[c].Parent {
			if _, ok := byChain[c]; !ok {
				break
			}
			live[c] = true
		}
	}

	depth := func(l Layer) int {
		n := 0
		for p := l.Parent; p != ""; p = byChain[p].Parent {
			n++
		}
		return n
	}
	var dead []Layer
	for _, l := range layers {
		if !live[l.ChainID] {
			dead = append(dead, l)
		}
	}
	// Children first: the driver refuses to remove a layer with children.
	slices.SortStableFunc(dead, func(a, b Layer) int { return cmp.Compare(depth(b), depth(a)) })
	return dead, nil
}

// Sweep removes the driver layers and tar-split files in the trash. A layer
// still in use (mounted, or with a child not yet removed) stays in the trash
// for the next Sweep.
func (s *Store) Sweep() error {
	type entry struct {
		key  []byte
		item trashItem
	}
	var entries []entry
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTrash)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var item trashItem
			if err := json.Unmarshal(v, &item); err != nil {
				return fmt.Errorf("trash entry %x: %w", k, err)
			}
			entries = append(entries, entry{slices.Clone(k), item})
			return nil
		})
	})
	if err != nil || len(entries) == 0 {
		return err
	}

	var errs []error
	var removed []entry
	for _, e := range entries {
		if s.driver.Exists(e.item.CacheID) {
			// Another process sweeping at the same time may have removed it.
			if err := s.driver.Remove(e.item.CacheID); err != nil && s.driver.Exists(e.item.CacheID) {
				if !errors.Is(err, errdefs.ErrInUse) {
					errs = append(errs, fmt.Errorf("remove driver layer %s: %w", e.item.CacheID, err))
				}
				continue
			}
		}
		if err := os.Remove(s.tmpTarSplitPath(e.item.CacheID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e)
	}

	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, e := range removed {
			// The tar-split goes in a transaction, after checking that no
			// registration has recorded the chain ID again meanwhile: a
			// registration moves its tar-split into place in the
			// transaction that records it.
			if e.item.ChainID != "" {
				if _, err := Lookup(tx, e.item.ChainID); errors.Is(err, errdefs.ErrNotFound) {
					if err := os.RemoveAll(s.layerDir(e.item.ChainID)); err != nil {
						return err
					}
				}
			}
			if err := tx.Bucket(bucketTrash).Delete(e.key); err != nil {
				return err
			}
		}
		return nil
	})
	return errors.Join(append(errs, err)...)
}
