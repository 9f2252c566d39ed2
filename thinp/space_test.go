package thinp

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

// mapMeta maps n new blocks of device id from vblock first on, through the
// metadata only, and stops at the first error.
func mapMeta(p *Pool, id uint32, first, n uint64) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range n {
		db, err := p.md.allocData()
		if err == nil {
			if err = p.md.setMapping(id, first+i, db); err != nil {
				p.md.data.dec(db)
			}
		}
		if err != nil {
			return i, p.noteSpace(err)
		}
	}
	return n, nil
}

// TestSnapshotCost checks that a snapshot and its commit touch as many
// metadata blocks with 16384 blocks mapped (1 GiB) as with 16 times more.
func TestSnapshotCost(t *testing.T) {
	cost := func(mapped uint64) (allocs, writes uint64) {
		p, meta, _ := newTestPool(t, Options{DataSize: 32 << 30, MetadataSize: 64 << 20})
		if err := p.CreateThin(0, 32<<30); err != nil {
			t.Fatal(err)
		}
		if _, err := mapMeta(p, 0, 0, mapped); err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		before := p.md.metaAllocs
		if err := p.CreateSnap(1, 0); err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		checkTools(t, p, nil, meta)
		return p.md.metaAllocs - before, p.md.lastCommitWrites
	}
	a1, w1 := cost(16384)
	a16, w16 := cost(16 * 16384)
	t.Logf("snapshot + commit: 1 GiB mapped: %d blocks allocated, %d written; 16 GiB: %d, %d", a1, w1, a16, w16)
	if a1 != a16 || w1 != w16 || w1 > 8 {
		t.Fatalf("snapshot cost grows with the mapped size: %d/%d blocks at 1 GiB, %d/%d at 16 GiB", a1, w1, a16, w16)
	}
}

// TestDataExhaustion fills the data space: the writer gets ErrNoSpace, the
// metadata stays valid, committed data survives, and growing the data file
// online makes the write succeed.
func TestDataExhaustion(t *testing.T) {
	p, meta, data := newTestPool(t, Options{DataSize: 32 << 16})
	if err := p.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	m := model{0: {}}
	m.write(t, p, 0, 0, 32*16, 1)
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := p.WriteAt(0, buf, 32<<16); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write to a full pool: %v, want ErrNoSpace", err)
	}
	if st := p.Status(); !st.OutOfData || st.OutOfMeta {
		t.Fatalf("status after exhaustion: %+v", st)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, m, meta)
	m.check(t, p, 40)

	if err := p.GrowData(64 << 16); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(data); err != nil || fi.Size() != 64<<16 {
		t.Fatalf("data file after grow: %v %v", fi.Size(), err)
	}
	m.write(t, p, 0, 32*16, 32*16, 1000)
	if st := p.Status(); st.OutOfData || st.TotalData != 64 || st.UsedData != 64 {
		t.Fatalf("status after grow: %+v", st)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, m, meta)
	if d := thinDump(t, meta); d.NrDataBlocks != 64 {
		t.Fatalf("thin_dump: %d data blocks after grow", d.NrDataBlocks)
	}
	m.check(t, p, 70)
}

// TestMetadataExhaustion fills the metadata space with mappings: writers
// get ErrNoSpace, commit still works, thin_check passes, and growing the
// metadata file online makes room.
func TestMetadataExhaustion(t *testing.T) {
	p, meta, _ := newTestPool(t, Options{DataSize: 16 << 30, MetadataSize: 1 << 20})
	if err := p.CreateThin(0, 16<<30); err != nil {
		t.Fatal(err)
	}
	mapped, err := mapMeta(p, 0, 0, 1<<20)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("after %d mappings: %v, want ErrNoSpace", mapped, err)
	}
	if _, err := p.WriteAt(0, make([]byte, 512), int64(mapped)*p.blockSize); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write with full metadata: %v, want ErrNoSpace", err)
	}
	if st := p.Status(); !st.OutOfMeta {
		t.Fatalf("status after exhaustion: %+v", st)
	}
	if st := p.Status(); st.UsedData != mapped {
		t.Fatalf("%d data blocks used, %d mapped: a failed write leaked", st.UsedData, mapped)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)

	if err := p.GrowMetadata(4 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := mapMeta(p, 0, mapped, mapped); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{7}, 512)
	if _, err := p.WriteAt(0, want, 2*int64(mapped)*p.blockSize); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)
	if st := p.Status(); st.OutOfMeta || st.TotalMeta != 1024 {
		t.Fatalf("status after grow: %+v", st)
	}
}
