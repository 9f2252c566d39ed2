// Package store is strata's library entry point: one root directory holding
// a graph driver's state, the layer store and the image store, opened
// together. API STUB: filled in by the layer-store work.
package store

import (
	"errors"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/layer"
)

var errTODO = errors.New("store: not implemented yet")

// Options select the root and the driver.
type Options struct {
	Root          string            // default DefaultRoot()
	Driver        string            // "" = automatic choice
	DriverOptions map[string]string // --storage-opt key=value
}

// Store is an open strata root.
type Store struct{}

// Open opens (creating if needed) the store at opts.Root, and cleans up what
// a crashed process left behind.
func Open(opts Options) (*Store, error) { return nil, errTODO }

func (s *Store) Close() error          { return errTODO }
func (s *Store) Root() string          { return "" }
func (s *Store) Driver() driver.Driver { return nil }
func (s *Store) Layers() *layer.Store  { return nil }
func (s *Store) Images() *image.Store  { return nil }

// Removed is one line of rmi's output.
type Removed struct {
	Untagged string // a reference removed
	Deleted  string // an image ID or layer chain ID deleted
}

// RemoveImage removes a reference, or an image by ID, as docker rmi does:
// it untags; the image goes when no reference is left. force removes an image
// by ID even with several references.
func (s *Store) RemoveImage(ref string, force bool) ([]Removed, error) { return nil, errTODO }

// GC removes layers that no image and no live lease holds.
func (s *Store) GC() error { return errTODO }
