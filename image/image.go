// Package image is the image store: image configs (Docker and OCI) by
// content digest, and the references (name:tag, name@digest) that point at
// them.
//
// On disk, in the store's metadata.db (see package metadata):
//
//	images/<image ID>   {config, parent, loaded, top}: the config byte for byte
//	                    and the chain ID of its top layer, which keeps the
//	                    image's layers alive
//	refs/<reference>    the image ID a normalised reference points at
//
// Every method runs in one transaction; Txn offers the same operations inside
// a caller's transaction, so that an image and its layers can change together.
package image

import (
	_ "crypto/sha256" // go-digest needs it registered to compute sha256 digests
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/metadata"
)

// Image is one image: a config and what the store knows about it.
type Image struct {
	ID          digest.Digest // digest of Config
	Config      []byte        // the config as loaded, byte for byte
	Spec        ocispec.Image // Config parsed
	Parent      digest.Digest // local parent image, "" for none
	RepoTags    []string      // normalised, e.g. docker.io/library/busybox:latest
	RepoDigests []string
	Loaded      time.Time
}

// DiffIDs returns the image's layer diff IDs, base first.
func (i Image) DiffIDs() []digest.Digest { return i.Spec.RootFS.DiffIDs }

// Store is the image store.
type Store struct {
	db *metadata.DB
}

// NewStore returns the image store kept in db.
func NewStore(db *metadata.DB) *Store { return &Store{db: db} }

// Create records config (idempotent) and returns the image.
func (s *Store) Create(config []byte) (Image, error) {
	var img Image
	err := s.db.Update(func(tx *bolt.Tx) (err error) {
		img, err = NewTxn(tx).Create(config)
		return err
	})
	return img, err
}

// Get returns an image by full ID.
func (s *Store) Get(id digest.Digest) (Image, error) {
	var img Image
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		img, err = NewTxn(tx).Get(id)
		return err
	})
	return img, err
}

// Resolve finds an image by reference, full or short ID, or name@digest.
func (s *Store) Resolve(ref string) (Image, error) {
	var img Image
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		img, err = NewTxn(tx).Resolve(ref)
		return err
	})
	return img, err
}

// List returns every image, by ID.
func (s *Store) List() ([]Image, error) {
	var imgs []Image
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		imgs, err = NewTxn(tx).List()
		return err
	})
	return imgs, err
}

// Children returns the images whose local parent is id.
func (s *Store) Children(id digest.Digest) ([]Image, error) {
	var imgs []Image
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		imgs, err = NewTxn(tx).Children(id)
		return err
	})
	return imgs, err
}

// Tag points ref at image id, moving it from any image it pointed at.
func (s *Store) Tag(id digest.Digest, ref string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return NewTxn(tx).Tag(id, ref) })
}

// Untag removes the reference ref.
func (s *Store) Untag(ref string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return NewTxn(tx).Untag(ref) })
}

// Delete removes image id and every reference to it.
func (s *Store) Delete(id digest.Digest) error {
	return s.db.Update(func(tx *bolt.Tx) error { return NewTxn(tx).Delete(id) })
}

// SetParent records the local parent image of id.
func (s *Store) SetParent(id, parent digest.Digest) error {
	return s.db.Update(func(tx *bolt.Tx) error { return NewTxn(tx).SetParent(id, parent) })
}
