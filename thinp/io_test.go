package thinp

import (
	"bytes"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/strata-storage/strata/errdefs"
)

// TestOverlappingWriters: goroutines write overlapping runs of blocks of
// one new device at once, so that writers meet on blocks another is
// provisioning and runs mix new and mapped blocks. Every block then holds
// one writer's data whole, each is mapped once, and no data block leaks.
func TestOverlappingWriters(t *testing.T) {
	p, meta, _ := newTestPool(t, Options{})
	if err := p.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	const writers, blocks = 4, 64
	var fns []func() error
	for w := range writers {
		fns = append(fns, func() error {
			buf := bytes.Repeat([]byte{byte('a' + w)}, int(8*p.blockSize))
			for i := range 40 {
				first := int64((i*7 + w*13) % (blocks - 8))
				if _, err := p.WriteAt(0, buf, first*p.blockSize); err != nil {
					return err
				}
			}
			return nil
		})
	}
	concurrently(t, fns...)
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)
	mapped := poolMappings(t, p)[0]
	if st := p.Usage(); st.UsedData != uint64(len(mapped)) {
		t.Fatalf("%d data blocks used, %d mapped", st.UsedData, len(mapped))
	}
	buf := make([]byte, p.blockSize)
	for vb := range mapped {
		if _, err := p.ReadAt(0, buf, int64(vb)*p.blockSize); err != nil {
			t.Fatal(err)
		}
		if c := buf[0]; c < 'a' || c >= 'a'+writers || !bytes.Equal(buf, bytes.Repeat([]byte{c}, len(buf))) {
			t.Fatalf("block %d mixes writers: %q...", vb, buf[:16])
		}
	}
}

// TestWriteRunsOutMidway: a write of several new blocks into a pool with
// fewer free returns the bytes of the blocks it could provision, which
// read back, and ErrNoSpace; nothing else is mapped.
func TestWriteRunsOutMidway(t *testing.T) {
	p, meta, _ := newTestPool(t, Options{DataSize: 8 << 16})
	if err := p.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteAt(0, make([]byte, 4<<16), 0); err != nil {
		t.Fatal(err)
	}
	buf := bytes.Repeat([]byte("z"), 10<<16)
	n, err := p.WriteAt(0, buf, 20<<16)
	if !errors.Is(err, ErrNoSpace) || n != 4<<16 {
		t.Fatalf("write past the free space: %d, %v; want %d, ErrNoSpace", n, err, 4<<16)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)
	got := make([]byte, 10<<16)
	if _, err := p.ReadAt(0, got, 20<<16); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte("z"), 4<<16), make([]byte, 6<<16)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("read back: %q... at the fifth block", got[4<<16:4<<16+8])
	}
}

// concurrently runs fns at once and fails t with their first error.
func concurrently(t testing.TB, fns ...func() error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(fns))
	for _, fn := range fns {
		wg.Go(func() { errs <- fn() })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestZero zeroes ranges whose edges fall in unmapped, mapped and shared
// blocks: the device reads as its model, an edge in an unmapped block
// provisions nothing, the whole blocks inside are unmapped, a snapshot
// keeps what it shared, and the metadata checks out.
func TestZero(t *testing.T) {
	p, meta, _ := newTestPool(t, Options{})
	bs := p.blockSize
	const blocks = 16
	if err := p.CreateThin(0, blocks*bs); err != nil {
		t.Fatal(err)
	}
	dev := bytes.Repeat([]byte("abcdefg"), int(blocks*bs)/7+1)[:blocks*bs]
	if _, err := p.WriteAt(0, dev[2*bs:5*bs], 2*bs); err != nil { // blocks 2-4
		t.Fatal(err)
	}
	if _, err := p.WriteAt(0, dev[12*bs:13*bs], 12*bs); err != nil { // block 12
		t.Fatal(err)
	}
	clear(dev[:2*bs])
	clear(dev[5*bs : 12*bs])
	clear(dev[13*bs:])
	snap := bytes.Clone(dev)
	if err := p.CreateSnap(1, 0); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ off, n int64 }{
		{8*bs + 4096, 4096},        // inside unmapped block 8
		{9*bs + 4096, 2 * bs},      // edges in unmapped 9 and 11
		{2*bs + 4096, 2*bs + 4096}, // edges in shared 2 and 4, 3 whole
		{12*bs + 8192, 4096},       // inside shared 12
		{12*bs + 8192, bs - 8192},  // to the end of 12, now exclusive
		{blocks*bs - 4096, 4096},   // the last sector
	} {
		if err := p.Zero(0, r.off, r.n); err != nil {
			t.Fatal(err)
		}
		clear(dev[r.off : r.off+r.n])
	}
	if err := p.Zero(7, 0, bs); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("zeroing an unknown device: %v, want ErrNotFound", err)
	}
	for id, want := range map[uint32][]byte{0: dev, 1: snap} {
		got := make([]byte, len(want))
		if _, err := p.ReadAt(id, got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("device %d does not read as its model after zeroing", id)
		}
	}
	var mapped []uint64
	p.mu.Lock()
	for v := range uint64(blocks) {
		if _, ok, _, err := p.md.mapping(0, v); err != nil {
			t.Fatal(err)
		} else if ok {
			mapped = append(mapped, v)
		}
	}
	p.mu.Unlock()
	if want := []uint64{2, 4, 12}; !slices.Equal(mapped, want) {
		t.Fatalf("device 0 maps blocks %v, want %v", mapped, want)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)
}
