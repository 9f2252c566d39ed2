package thinp

import (
	"errors"
	"os"
	"reflect"
	"testing"
)

// loadedBitmaps returns the bitmaps of sm decoded so far.
func loadedBitmaps(sm *spaceMap) (loaded []int) {
	for i, bm := range sm.bitmaps {
		if bm.counts != nil {
			loaded = append(loaded, i)
		}
	}
	return loaded
}

// TestLazySpaceMaps: Open decodes no bitmap, Usage agrees with Status
// without walking a tree, allocation passes full bitmaps unread, and a pool
// working with some bitmaps never read commits what thin_check and
// thin_dump accept, counts above 2 included.
func TestLazySpaceMaps(t *testing.T) {
	p, meta, data := newTestPool(t, Options{DataSize: 4 << 30}) // 5 data bitmaps
	if err := p.CreateThin(0, 4<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := mapMeta(p, 0, 0, entriesPerBitmap+10); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint32{1, 2} {
		if err := p.CreateSnap(id, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Copying block 0 in two devices shadows the leaf they share twice:
	// its other blocks are counted 3.
	for _, id := range []uint32{0, 1} {
		if _, err := p.WriteAt(id, []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if len(p.md.data.overflow) == 0 {
		t.Fatal("no data block counted 3 or more: the test does not cover the reference-count tree")
	}
	want := p.Usage()

	reopen := func() {
		t.Helper()
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		var err error
		if p, err = Open(meta, data); err != nil {
			t.Fatal(err)
		}
	}
	reopen()
	if l := loadedBitmaps(p.md.data); len(l) != 0 {
		t.Fatalf("open decoded data bitmaps %v", l)
	}
	if l := loadedBitmaps(p.md.meta); len(l) != 0 {
		t.Fatalf("open decoded metadata bitmaps %v", l)
	}
	if got := p.Usage(); !reflect.DeepEqual(got, want) || got.Devices != nil {
		t.Fatalf("usage after reopen %+v, want %+v", got, want)
	}

	// Bitmap 0 is full: a new device's blocks come from bitmap 1 without
	// reading it.
	if err := p.CreateThin(3, 1<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteAt(3, make([]byte, 4*p.blockSize), 0); err != nil {
		t.Fatal(err)
	}
	if l := loadedBitmaps(p.md.data); len(l) != 1 || l[0] != 1 {
		t.Fatalf("decoded data bitmaps %v, want [1]", l)
	}
	for _, id := range []uint32{1, 2} {
		if err := p.Delete(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Discard(0, 100*p.blockSize, 200*p.blockSize); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)
	st := p.Status()
	st.Devices = nil
	if got := p.Usage(); !reflect.DeepEqual(got, st) {
		t.Fatalf("usage %+v, status %+v", got, st)
	}
	reopen()
	if got := p.Usage(); !reflect.DeepEqual(got, st) {
		t.Fatalf("usage after reopen %+v, want %+v", got, st)
	}
	// The blocks discarded are allocatable again, found from the index.
	before := p.Usage().UsedData
	if _, err := mapMeta(p, 3, 10, 200); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)
	if got := p.Usage().UsedData; got != before+200 {
		t.Fatalf("used data %d after mapping 200 blocks to %d", got, before)
	}
	// Every bitmap agrees with its index entry and the reference-count tree.
	for _, sm := range []*spaceMap{p.md.data, p.md.meta} {
		for i := range sm.bitmaps {
			sm.load(i)
		}
		if sm.errors != 0 || sm.err != nil {
			t.Fatalf("space map inconsistent: %d errors, %v", sm.errors, sm.err)
		}
	}
}

// TestBadBitmapFoundLate: a data bitmap that fails its checksum is found
// when first needed, not at Open; writes needing space then fail, the
// pool refuses to commit and says it needs a check.
func TestBadBitmapFoundLate(t *testing.T) {
	p, meta, data := newTestPool(t, Options{DataSize: 4 << 30})
	if err := p.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteAt(0, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	loc := p.md.data.bitmaps[0].loc
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(meta, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt([]byte("garbage"), int64(loc)*metaBlockSize+100)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}

	p, err = Open(meta, data)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	if p.Usage().NeedsCheck {
		t.Fatal("needs check before the bad bitmap was read")
	}
	if _, err := p.WriteAt(0, []byte("y"), p.blockSize); !errors.Is(err, errCorrupt) {
		t.Fatalf("write needing a new block: %v, want a corrupt metadata error", err)
	}
	if err := p.Commit(); !errors.Is(err, errCorrupt) {
		t.Fatalf("commit: %v, want a corrupt metadata error", err)
	}
	if !p.Usage().NeedsCheck {
		t.Fatal("status does not say the pool needs a check")
	}
	buf := make([]byte, 1)
	if _, err := p.ReadAt(0, buf, 0); err != nil || buf[0] != 'x' {
		t.Fatalf("read of a committed block: %q, %v", buf, err)
	}
}
