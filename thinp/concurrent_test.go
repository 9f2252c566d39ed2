package thinp

import (
	"sync"
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
