package thinp

import (
	"math/rand/v2"
	"testing"
)

// treeDepth returns the number of levels of device id's mapping tree.
func treeDepth(t *testing.T, p *Pool, id uint32) int {
	t.Helper()
	depth := 1
	for b := p.md.roots[id]; ; depth++ {
		n, err := p.md.node(b)
		if err != nil {
			t.Fatal(err)
		}
		if !n.internal {
			return depth
		}
		b = n.vals[0]
	}
}

// TestLargeTrees drives three-level mapping trees through the metadata
// alone (no data I/O): splits, shared nodes under a snapshot, removals that
// merge and redistribute nodes, and collapse back to one leaf.
func TestLargeTrees(t *testing.T) {
	const n = 70000
	p, meta, _ := newTestPool(t, Options{DataSize: 8 << 30, MetadataSize: 64 << 20})
	rng := rand.New(rand.NewPCG(1, 2))
	md := p.md
	mapBlock := func(id uint32, vb uint64) {
		db, err := md.allocData()
		if err != nil {
			t.Fatal(err)
		}
		if err := md.setMapping(id, vb, db); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.CreateThin(0, n*p.blockSize); err != nil {
		t.Fatal(err)
	}
	for _, vb := range rng.Perm(n) {
		mapBlock(0, uint64(vb))
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if d := treeDepth(t, p, 0); d != 3 {
		t.Fatalf("depth %d, want 3", d)
	}
	checkTools(t, p, nil, meta)

	if err := p.CreateSnap(1, 0); err != nil {
		t.Fatal(err)
	}
	for _, vb := range rng.Perm(n)[:n/2] {
		if err := md.unmap(0, uint64(vb), uint64(vb)+1); err != nil {
			t.Fatal(err)
		}
	}
	for _, vb := range rng.Perm(n)[:n/4] {
		mapBlock(1, uint64(vb))
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)

	if err := p.Delete(0); err != nil {
		t.Fatal(err)
	}
	if err := p.Discard(1, 0, n/3*p.blockSize); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)

	for _, vb := range rng.Perm(n) {
		if vb >= n/3 {
			if err := md.unmap(1, uint64(vb), uint64(vb)+1); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if d := treeDepth(t, p, 1); d != 1 {
		t.Fatalf("empty tree has depth %d", d)
	}
	checkTools(t, p, nil, meta)
	if st := p.Status(); st.UsedData != 0 || st.UsedMeta > 20 {
		t.Fatalf("after unmapping everything: %d data and %d metadata blocks used", st.UsedData, st.UsedMeta)
	}
}
