package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/archive"
	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
)

// maxParallelApply bounds the layers applied at once: enough to overlap the
// decompression, hashing and writes of independent layers.
const maxParallelApply = 4

// errRaced reports that another registration recorded one of the layers
// first, below layers of ours that were built on our copy of it.
var errRaced = errors.New("layer registered concurrently")

// Source is one layer of a chain to register.
type Source struct {
	DiffID digest.Digest                 // expected diff ID; verified after apply
	Open   func() (io.ReadCloser, error) // the layer tar, compressed or not

	diffOf *driverLayer // instead of Open: the diff of a driver layer (RegisterDiff)
}

// driverLayer is a layer of the driver and the parent its diff is taken against.
type driverLayer struct{ id, parent string }

// RegisterChain registers a stack of layers on top of parent ("" = none),
// base first, skipping those already present, in parallel where the driver
// allows. Every layer returned is held by lease.
func (s *Store) RegisterChain(ctx context.Context, lease *Lease, parent digest.Digest, srcs []Source) ([]Layer, error) {
	for i, src := range srcs {
		if err := src.DiffID.Validate(); err != nil {
			return nil, fmt.Errorf("layer %d: diff ID %q: %w", i, src.DiffID, errdefs.ErrInvalid)
		}
	}
	// After a race the winner's layer is held and skipped by the next
	// attempt, so each attempt starts higher in the chain and this ends.
	for {
		layers, err := s.register(ctx, lease, parent, srcs)
		if !errors.Is(err, errRaced) {
			return layers, err
		}
	}
}

// Register registers one layer tar (compressed or not) whose diff ID is not
// known in advance, on top of parent, held by lease.
func (s *Store) Register(ctx context.Context, lease *Lease, parent digest.Digest, r io.Reader) (Layer, error) {
	src := Source{Open: func() (io.ReadCloser, error) { return io.NopCloser(r), nil }}
	layers, err := s.register(ctx, lease, parent, []Source{src})
	if err != nil {
		return Layer{}, err
	}
	return layers[0], nil
}

// RegisterDiff registers the diff of the driver's layer from against
// fromParent (a container's read-write layer against its init layer) on top
// of parent, held by lease: what a commit does. A driver.DiffCopier makes
// the new layer from from's files while their tar is hashed; for the other
// drivers the tar of the diff is extracted.
func (s *Store) RegisterDiff(ctx context.Context, lease *Lease, parent digest.Digest, from, fromParent string) (Layer, error) {
	src := Source{diffOf: &driverLayer{from, fromParent}}
	layers, err := s.register(ctx, lease, parent, []Source{src})
	if err != nil {
		return Layer{}, err
	}
	return layers[0], nil
}

// newLayer is a layer of this call: created in the driver, then applied,
// then recorded.
type newLayer struct {
	index   int // in the call's sources
	src     Source
	cacheID string
	diffID  digest.Digest
	size    int64
	tarSize int64
}

func (n *newLayer) errorf(err error) error {
	if n.src.DiffID == "" {
		return fmt.Errorf("layer %d: %w", n.index, err)
	}
	return fmt.Errorf("layer %d (%s): %w", n.index, n.src.DiffID, err)
}

// register registers srcs on top of parent; sources without a diff ID are
// only allowed last. It returns errRaced when it must be called again.
func (s *Store) register(ctx context.Context, lease *Lease, parent digest.Digest, srcs []Source) ([]Layer, error) {
	if lease == nil {
		return nil, fmt.Errorf("register layers: no lease: %w", errdefs.ErrInvalid)
	}
	// Hold the parent and the layers present already, then skip them.
	var base Layer
	var layers []Layer
	err := s.db.Update(func(tx *bolt.Tx) error {
		layers = nil
		var held []digest.Digest
		if parent != "" {
			var err error
			if base, err = Lookup(tx, parent); err != nil {
				return fmt.Errorf("parent: %w", err)
			}
			held = append(held, parent)
		}
		c := parent
		for _, src := range srcs {
			if src.DiffID == "" {
				break
			}
			c = childChainID(c, src.DiffID)
			l, err := Lookup(tx, c)
			if errors.Is(err, errdefs.ErrNotFound) {
				break
			}
			if err != nil {
				return err
			}
			layers = append(layers, l)
			held = append(held, c)
		}
		return hold(tx, lease.id, held...)
	})
	if err != nil {
		return nil, err
	}
	if len(layers) == len(srcs) {
		return layers, nil
	}
	if len(layers) > 0 {
		base = layers[len(layers)-1]
	}

	todo := make([]*newLayer, 0, len(srcs)-len(layers))
	for i := len(layers); i < len(srcs); i++ {
		todo = append(todo, &newLayer{index: i, src: srcs[i], cacheID: randomID()})
	}
	if err := s.createAndApply(ctx, lease, base.CacheID, todo); err != nil {
		return nil, err
	}

	recorded, conflict, err := s.record(lease, base.ChainID, todo)
	if err != nil {
		s.discard(lease, todo)
		return nil, err
	}
	// Where another registration won, ours is dropped with everything built
	// on it; those above the winner are registered again on top of it.
	s.discard(lease, todo[conflict:])
	if len(recorded) < len(todo) {
		return nil, errRaced
	}
	return append(layers, recorded...), nil
}

// createAndApply creates the driver layers of todo on top of parentCacheID
// and applies their tars: concurrently when the driver allows, else in
// order. On failure it removes them all and returns the first error; on
// success their content is durable.
func (s *Store) createAndApply(ctx context.Context, lease *Lease, parentCacheID string, todo []*newLayer) error {
	ids := make([]string, len(todo))
	for i, n := range todo {
		ids[i] = n.cacheID
	}
	// Recorded before they exist, so that the GC finds them if we die.
	if err := s.db.Update(func(tx *bolt.Tx) error { return addPending(tx, lease.id, ids...) }); err != nil {
		return err
	}

	applyAll := s.applyInOrder
	if s.driver.Capabilities().ParallelApply {
		applyAll = s.applyConcurrently
	}
	if err := applyAll(ctx, parentCacheID, todo); err != nil {
		s.discard(lease, todo)
		return err
	}
	return syncFS(s.driverRoot(), s.tmpDir())
}

// applyInOrder creates and applies each layer once its parent is complete,
// for drivers whose Create copies the parent.
func (s *Store) applyInOrder(ctx context.Context, parentCacheID string, todo []*newLayer) error {
	for _, n := range todo {
		if err := s.driver.Create(n.cacheID, parentCacheID, nil); err != nil {
			return n.errorf(err)
		}
		if err := s.apply(ctx, n, parentCacheID); err != nil {
			return n.errorf(err)
		}
		parentCacheID = n.cacheID
	}
	return nil
}

// applyConcurrently creates all layers first (cheap), then applies up to
// maxParallelApply at once; the first failure cancels the others.
func (s *Store) applyConcurrently(ctx context.Context, parentCacheID string, todo []*newLayer) error {
	parents := make([]string, len(todo))
	for i, n := range todo {
		parents[i] = parentCacheID
		if err := s.driver.Create(n.cacheID, parentCacheID, nil); err != nil {
			return n.errorf(err)
		}
		parentCacheID = n.cacheID
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, maxParallelApply)
	var wg sync.WaitGroup
	for i, n := range todo {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := s.apply(ctx, n, parents[i]); err != nil {
				cancel(n.errorf(err)) // only the first cause is kept
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// apply streams the tar of n into its driver layer in one pass: decompress,
// hash and count, record the tar's headers and padding (tar-split) and let
// the driver extract it. Nothing of the content is buffered.
func (s *Store) apply(ctx context.Context, n *newLayer, parentCacheID string) error {
	f, err := os.OpenFile(s.tmpTarSplitPath(n.cacheID), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	zw, err := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err != nil {
		return err
	}
	packer := storage.NewJSONPacker(zw)

	var a applied
	if from := n.src.diffOf; from != nil {
		a, err = s.copyDiff(n.cacheID, parentCacheID, from, packer)
		if errors.Is(err, errdefs.ErrNotSupported) {
			var rc io.ReadCloser
			if rc, err = s.driver.Diff(from.id, from.parent); err == nil {
				a, err = s.extract(ctx, n.cacheID, parentCacheID, rc, packer)
				err = errors.Join(err, rc.Close())
			}
		}
	} else {
		var rc io.ReadCloser
		if rc, err = n.src.Open(); err == nil {
			a, err = s.extract(ctx, n.cacheID, parentCacheID, rc, packer)
			err = errors.Join(err, rc.Close())
		}
	}
	if err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}

	n.diffID = a.diffID
	if n.src.DiffID != "" && n.diffID != n.src.DiffID {
		return fmt.Errorf("layer diff ID mismatch: got %s, want %s: %w", n.diffID, n.src.DiffID, errdefs.ErrInvalid)
	}
	n.size, n.tarSize = a.size, a.tarSize
	s.flush.start(s.driverRoot())
	return nil
}

// applied is what applying a layer tar found.
type applied struct {
	diffID  digest.Digest
	size    int64 // bytes of content, as the driver counts them
	tarSize int64
}

// extract has the driver extract the layer tar r (compressed or not) into
// layer id while the tar is hashed and packed.
func (s *Store) extract(ctx context.Context, id, parent string, r io.Reader, packer storage.Packer) (applied, error) {
	tarStream, _, err := archive.DecompressStream(ctxReader{ctx, r})
	if err != nil {
		return applied{}, err
	}
	defer tarStream.Close()
	digester := digest.SHA256.Digester()
	var tarSize byteCounter
	hashed := io.TeeReader(tarStream, io.MultiWriter(digester.Hash(), &tarSize))
	split, done, err := asm.NewInputTarStreamWithDone(hashed, packer, nil)
	if err != nil {
		return applied{}, err
	}
	size, err := s.driver.ApplyDiff(id, parent, split)
	if err == nil {
		// The driver may stop at the end-of-archive marker; the padding
		// after it is part of the tar and of its diff ID.
		_, err = io.Copy(io.Discard, split)
	}
	split.Close()
	if splitErr := <-done; err == nil {
		err = splitErr
	}
	return applied{digester.Digest(), size, int64(tarSize)}, err
}

// copyDiff has a driver.DiffCopier copy the diff of from into layer id,
// recording the tar it writes; other drivers fail with ErrNotSupported.
func (s *Store) copyDiff(id, parent string, from *driverLayer, packer storage.Packer) (applied, error) {
	c, ok := s.driver.(driver.DiffCopier)
	if !ok {
		return applied{}, errdefs.ErrNotSupported
	}
	rec := newTarRecorder(packer)
	size, err := c.CopyDiff(id, parent, from.id, from.parent, rec)
	if err == nil {
		err = rec.Close()
	}
	return applied{rec.digester.Digest(), size, rec.size}, err
}

// record records the applied layers of todo on top of parent in one
// transaction, moving their tar-split files into place. Where a layer's
// chain ID is recorded already (another registration won), it takes that
// layer, stops and returns its index as conflict; else conflict is len(todo).
func (s *Store) record(lease *Lease, parent digest.Digest, todo []*newLayer) (layers []Layer, conflict int, err error) {
	now := time.Now().UTC()
	err = s.db.Update(func(tx *bolt.Tx) error {
		layers, conflict = nil, len(todo)
		for i, n := range todo {
			chainID := childChainID(parent, n.diffID)
			if l, err := Lookup(tx, chainID); err == nil {
				layers, conflict = append(layers, l), i
				return hold(tx, lease.id, chainID)
			}
			l := Layer{
				ChainID: chainID,
				DiffID:  n.diffID,
				Parent:  parent,
				CacheID: n.cacheID,
				Size:    n.size,
				TarSize: n.tarSize,
				Created: now,
			}
			if err := s.installTarSplit(n.cacheID, chainID); err != nil {
				return err
			}
			if err := put(tx, l); err != nil {
				return err
			}
			if err := hold(tx, lease.id, chainID); err != nil {
				return err
			}
			if err := dropPending(tx, lease.id, n.cacheID); err != nil {
				return err
			}
			layers = append(layers, l)
			parent = chainID
		}
		if len(layers) == 0 || conflict == 0 {
			return nil
		}
		return syncDir(filepath.Join(s.root, "layerdb"))
	})
	return layers, conflict, err
}

// installTarSplit moves the tar-split of driver layer cacheID to its place
// for chainID, durably.
func (s *Store) installTarSplit(cacheID string, chainID digest.Digest) error {
	dir := s.layerDir(chainID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Rename(s.tmpTarSplitPath(cacheID), s.tarSplitPath(chainID)); err != nil {
		return err
	}
	return syncDir(dir)
}

// discard removes driver layers of this call that will not be recorded,
// children first, and then forgets them. What it cannot remove stays
// pending in the lease, for the GC once the lease ends.
func (s *Store) discard(lease *Lease, layers []*newLayer) {
	var removed []string
	for i := len(layers) - 1; i >= 0; i-- {
		id := layers[i].cacheID
		if s.driver.Exists(id) {
			if err := s.driver.Remove(id); err != nil {
				break
			}
		}
		os.Remove(s.tmpTarSplitPath(id))
		removed = append(removed, id)
	}
	if len(removed) > 0 {
		// On failure they stay pending: the GC removes them when the lease ends.
		_ = s.db.Update(func(tx *bolt.Tx) error { return dropPending(tx, lease.id, removed...) })
	}
}

func (s *Store) driverRoot() string { return filepath.Join(s.root, s.driver.String()) }

// ctxReader fails reads once ctx is done, so that cancelling stops a
// layer mid-stream.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

type byteCounter int64

func (c *byteCounter) Write(p []byte) (int, error) {
	*c += byteCounter(len(p))
	return len(p), nil
}
