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

var bucketTrash = []byte("trash")

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
func (s *Store) GC() ([]digest.Digest, error) {
	var deleted []digest.Digest
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		deleted, err = s.Collect(tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return deleted, s.Sweep()
}

// Collect is the transactional half of GC, for callers that change what
// holds layers in the same transaction (e.g. deleting an image): it deletes
// dead leases and unreachable layer records in tx and queues their driver
// layers for Sweep, which the caller runs after the commit.
func (s *Store) Collect(tx *bolt.Tx) ([]digest.Digest, error) {
	roots, err := s.collectLeases(tx)
	if err != nil {
		return nil, err
	}
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
