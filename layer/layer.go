// Package layer is the layer store: content-addressed read-only layers kept
// by a graph driver, registered from layer tars in one streaming pass and
// given back byte for byte.
//
// On disk, under the store root:
//
//	metadata.db                          layer records, leases and trash (see package metadata)
//	layerdb/<chainID hex>/tar-split.json.gz
//	                                     the tar's headers and padding, to rebuild it exactly
//	layerdb/tmp/<cacheID>.json.gz        tar-split of a layer being registered
//	leases/<id>                          flocked by the lease's owner while it lives
//	<driver>/...                         the driver's layers, named by cache ID
//
// A layer lives while something reaches it by parent links: the top layer
// of an image (the roots the image store reports) or a layer held by a live
// lease. There are no stored reference counts for a crash to leave wrong.
package layer

import (
	_ "crypto/sha256" // go-digest needs it registered to compute sha256 digests
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/metadata"
)

// Layer is one registered read-only layer.
type Layer struct {
	ChainID digest.Digest `json:"chainID"`          // identity: DiffID for a base layer, else sha256(parent + " " + DiffID)
	DiffID  digest.Digest `json:"diffID"`           // sha256 of the uncompressed layer tar
	Parent  digest.Digest `json:"parent,omitempty"` // chain ID of the parent, "" for a base layer
	CacheID string        `json:"cacheID"`          // the id the driver knows the layer by
	Size    int64         `json:"size"`             // bytes of content in this layer alone
	TarSize int64         `json:"tarSize"`          // bytes of the uncompressed layer tar
	Created time.Time     `json:"created"`
}

// ChainID returns the chain ID of a stack of diff IDs, base first.
func ChainID(diffIDs []digest.Digest) digest.Digest {
	if len(diffIDs) == 0 {
		return ""
	}
	c := diffIDs[0]
	for _, d := range diffIDs[1:] {
		c = childChainID(c, d)
	}
	return c
}

// childChainID is the chain ID of diffID applied on top of parent ("" = none).
func childChainID(parent, diffID digest.Digest) digest.Digest {
	if parent == "" {
		return diffID
	}
	return digest.FromString(parent.String() + " " + diffID.String())
}

// RootsFunc lists the chain IDs that keep layers alive besides leases: the
// top layers of images. The image store provides it, as layer cannot import
// image.
type RootsFunc func(tx *bolt.Tx) ([]digest.Digest, error)

// Store is the layer store.
type Store struct {
	root   string
	db     *metadata.DB
	driver driver.Driver
	roots  RootsFunc
	flush  flusher
}

var bucketLayers = []byte("layers")

// NewStore returns the layer store of the strata root, keeping layers in d
// and metadata in db. roots may be nil: then only leases hold layers.
func NewStore(root string, db *metadata.DB, d driver.Driver, roots RootsFunc) (*Store, error) {
	s := &Store{root: root, db: db, driver: d, roots: roots}
	for _, dir := range []string{s.tmpDir(), s.leaseDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("layer store: %w", err)
		}
	}
	return s, nil
}

func (s *Store) layerDir(chainID digest.Digest) string {
	return filepath.Join(s.root, "layerdb", chainID.Encoded())
}

func (s *Store) tarSplitPath(chainID digest.Digest) string {
	return filepath.Join(s.layerDir(chainID), "tar-split.json.gz")
}

func (s *Store) tmpDir() string { return filepath.Join(s.root, "layerdb", "tmp") }

func (s *Store) tmpTarSplitPath(cacheID string) string {
	return filepath.Join(s.tmpDir(), cacheID+".json.gz")
}

// Get returns a registered layer by chain ID.
func (s *Store) Get(chainID digest.Digest) (Layer, error) {
	var l Layer
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		l, err = Lookup(tx, chainID)
		return err
	})
	return l, err
}

// List returns every registered layer, by chain ID.
func (s *Store) List() ([]Layer, error) {
	var layers []Layer
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		layers, err = all(tx)
		return err
	})
	return layers, err
}

// References returns how many images and child layers use the layer: what
// a display shows as its reference count.
func (s *Store) References(chainID digest.Digest) (int, error) {
	var n int
	err := s.db.View(func(tx *bolt.Tx) error {
		if _, err := Lookup(tx, chainID); err != nil {
			return err
		}
		layers, err := all(tx)
		if err != nil {
			return err
		}
		for _, l := range layers {
			if l.Parent == chainID {
				n++
			}
		}
		if s.roots == nil {
			return nil
		}
		roots, err := s.roots(tx)
		if err != nil {
			return err
		}
		for _, r := range roots {
			if r == chainID {
				n++
			}
		}
		return nil
	})
	return n, err
}

// Lookup returns the layer chainID as recorded in tx, so that callers can
// check a layer and act on it in one transaction.
func Lookup(tx *bolt.Tx, chainID digest.Digest) (Layer, error) {
	var l Layer
	b := tx.Bucket(bucketLayers)
	if b == nil {
		return l, fmt.Errorf("layer %s: %w", chainID, errdefs.ErrNotFound)
	}
	v := b.Get([]byte(chainID))
	if v == nil {
		return l, fmt.Errorf("layer %s: %w", chainID, errdefs.ErrNotFound)
	}
	if err := json.Unmarshal(v, &l); err != nil {
		return l, fmt.Errorf("layer %s: corrupt record: %w", chainID, err)
	}
	return l, nil
}

func all(tx *bolt.Tx) ([]Layer, error) {
	var layers []Layer
	b := tx.Bucket(bucketLayers)
	if b == nil {
		return nil, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		var l Layer
		if err := json.Unmarshal(v, &l); err != nil {
			return fmt.Errorf("layer %s: corrupt record: %w", k, err)
		}
		layers = append(layers, l)
		return nil
	})
	return layers, err
}

func put(tx *bolt.Tx, l Layer) error {
	b, err := tx.CreateBucketIfNotExists(bucketLayers)
	if err != nil {
		return err
	}
	v, err := json.Marshal(l)
	if err != nil {
		return err
	}
	return b.Put([]byte(l.ChainID), v)
}
