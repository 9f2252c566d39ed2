package thinp

import (
	"bytes"
	"errors"
	"sync"
	"testing"
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
