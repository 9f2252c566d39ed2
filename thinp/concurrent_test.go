package thinp

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// TestConcurrentIO writes disjoint blocks of two devices from several
// goroutines, reads in parallel, while snapshots and commits run; then the
// devices hold every last write and the metadata checks out.
func TestConcurrentIO(t *testing.T) {
	const writers, blocksEach, rounds = 4, 16, 6
	p, meta, _ := newTestPool(t, Options{})
	for id := range uint32(2) {
		if err := p.CreateThin(id, 1<<30); err != nil {
			t.Fatal(err)
		}
	}
	per := p.blockSize / regionSize
	models := make([]model, writers)
	var wg sync.WaitGroup
	for w := range writers {
		models[w] = model{0: {}, 1: {}}
		wg.Go(func() {
			for r := range rounds {
				for b := range int64(blocksEach) {
					blk := int64(w*blocksEach) + b
					// Alternate whole blocks and single regions.
					if r%2 == 0 {
						models[w].write(t, p, uint32(w%2), blk*per, per, uint64(1e6*w+1e4*r)+uint64(b*per))
					} else {
						models[w].write(t, p, uint32(w%2), blk*per+int64(r), 1, uint64(1e6*w+1e4*r)+uint64(b))
					}
					buf := make([]byte, regionSize)
					if _, err := p.ReadAt(uint32(1-w%2), buf, blk*p.blockSize); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Go(func() {
		for i := range uint32(rounds) {
			if err := p.CreateSnap(10+i, i%2); err != nil {
				t.Error(err)
			}
			if err := p.Commit(); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	all := model{0: {}, 1: {}}
	for _, m := range models {
		for id, blocks := range m {
			for b, r := range blocks {
				all[id][b] = r
			}
		}
	}
	checkTools(t, p, nil, meta)
	// The snapshots were taken at any moment: only devices 0 and 1 have
	// contents known in advance.
	buf := make([]byte, p.blockSize)
	for id, blocks := range all {
		for b, regions := range blocks {
			if _, err := p.ReadAt(id, buf, int64(b)*p.blockSize); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, regionSize)
			for r, stamp := range regions {
				stampRegion(want, stamp)
				if string(buf[r*regionSize:(r+1)*regionSize]) != string(want) {
					t.Fatalf("device %d block %d region %d: lost a write", id, b, r)
				}
			}
		}
	}
}

// TestDiscardAlongsideIO discards ranges of a device while whole and
// partial blocks are written to it and read from it, snapshots of it made
// and deleted, commits made: discards hold no request back, so a write may
// land in a block a discard has just freed, which must serve no one else
// before the next commit. Every 4 KiB region of the device ends up zero
// or as its own block's writers left it, and the metadata checks out.
func TestDiscardAlongsideIO(t *testing.T) {
	const blocks, rounds = 16, 300
	p, meta, _ := newTestPool(t, Options{DataSize: 256 * DefaultBlockSize})
	if err := p.CreateThin(0, blocks*p.blockSize); err != nil {
		t.Fatal(err)
	}
	// stamp fills a region of block b: its number, then a byte of it.
	stamp := func(region []byte, b int64) {
		for i := range region {
			region[i] = byte(b)
		}
		binary.LittleEndian.PutUint64(region, uint64(b)+1)
	}
	var done atomic.Int32
	var fns []func() error
	for w := range int64(4) {
		fns = append(fns, func() error {
			defer done.Add(1)
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			buf := make([]byte, p.blockSize)
			for range rounds {
				b := rng.Int64N(blocks)
				off, n := b*p.blockSize, p.blockSize
				if rng.IntN(2) == 0 { // one region
					off += rng.Int64N(p.blockSize/regionSize) * regionSize
					n = regionSize
				}
				for r := int64(0); r < n; r += regionSize {
					stamp(buf[r:r+regionSize], b)
				}
				if _, err := p.WriteAt(0, buf[:n], off); err != nil {
					return err
				}
				if _, err := p.ReadAt(0, buf[:regionSize], off); err != nil {
					return err
				}
			}
			return nil
		})
	}
	fns = append(fns, func() error {
		rng := rand.New(rand.NewPCG(9, 9))
		for done.Load() < 4 {
			first := rng.Int64N(blocks)
			if err := p.Discard(0, first*p.blockSize, (1+rng.Int64N(4))*p.blockSize); err != nil {
				return err
			}
		}
		return nil
	}, func() error {
		for done.Load() < 4 {
			if err := p.CreateSnap(1, 0); err != nil {
				return err
			}
			if err := p.Commit(); err != nil {
				return err
			}
			if err := p.Delete(1); err != nil {
				return err
			}
			if err := p.Commit(); err != nil {
				return err
			}
		}
		return nil
	})
	concurrently(t, fns...)
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)
	buf := make([]byte, p.blockSize)
	want := make([]byte, regionSize)
	zero := make([]byte, regionSize)
	for b := range int64(blocks) {
		if _, err := p.ReadAt(0, buf, b*p.blockSize); err != nil {
			t.Fatal(err)
		}
		stamp(want, b)
		for r := int64(0); r < p.blockSize; r += regionSize {
			if got := buf[r : r+regionSize]; !bytes.Equal(got, zero) && !bytes.Equal(got, want) {
				t.Fatalf("block %d region %d holds another block's data (stamp %d)", b, r/regionSize, binary.LittleEndian.Uint64(got)-1)
			}
		}
	}
}
