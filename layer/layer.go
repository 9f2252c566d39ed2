// Package layer is the layer store: content-addressed read-only layers kept
// by a graph driver. API STUB: filled in by the layer-store work.
package layer

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
)

var errTODO = errors.New("layer: not implemented yet")

// Layer is one registered read-only layer.
type Layer struct {
	ChainID digest.Digest // identity: DiffID for a base layer, else sha256(parent + " " + DiffID)
	DiffID  digest.Digest // sha256 of the uncompressed layer tar
	Parent  digest.Digest // chain ID of the parent, "" for a base layer
	CacheID string        // the id the driver knows the layer by
	Size    int64         // bytes of content in this layer alone
	TarSize int64         // bytes of the uncompressed layer tar
	Created time.Time
}

// ChainID returns the chain ID of a stack of diff IDs, base first.
func ChainID(diffIDs []digest.Digest) digest.Digest {
	if len(diffIDs) == 0 {
		return ""
	}
	c := diffIDs[0]
	for _, d := range diffIDs[1:] {
		c = digest.FromString(c.String() + " " + d.String())
	}
	return c
}

// Store is the layer store.
type Store struct{}

// Lease protects the layers registered under it from garbage collection
// until it is released; a lease of a crashed process is dead and its work is
// cleaned up by the next GC.
type Lease struct{}

// Release ends the lease.
func (l *Lease) Release() error { return errTODO }

// NewLease starts a lease.
func (s *Store) NewLease() (*Lease, error) { return nil, errTODO }

// Source is one layer of a chain to register.
type Source struct {
	DiffID digest.Digest                 // expected diff ID; verified after apply
	Open   func() (io.ReadCloser, error) // the layer tar, compressed or not
}

// RegisterChain registers a stack of layers on top of parent ("" = none),
// base first, skipping those already present, in parallel where the driver
// allows. Every layer returned is held by lease.
func (s *Store) RegisterChain(ctx context.Context, lease *Lease, parent digest.Digest, srcs []Source) ([]Layer, error) {
	return nil, errTODO
}

// Register registers one layer tar (compressed or not) whose diff ID is not
// known in advance, on top of parent, held by lease.
func (s *Store) Register(ctx context.Context, lease *Lease, parent digest.Digest, r io.Reader) (Layer, error) {
	return Layer{}, errTODO
}

// Get returns a registered layer by chain ID.
func (s *Store) Get(chainID digest.Digest) (Layer, error) { return Layer{}, errTODO }

// List returns every registered layer.
func (s *Store) List() ([]Layer, error) { return nil, errTODO }

// TarStream returns the layer's tar, byte-identical to the one registered.
func (s *Store) TarStream(chainID digest.Digest) (io.ReadCloser, error) { return nil, errTODO }
