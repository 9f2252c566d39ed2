package thinp

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"testing"

	"github.com/strata-storage/strata/errdefs"
)

func newTestPool(t testing.TB, opts Options) (p *Pool, meta, data string) {
	t.Helper()
	dir := t.TempDir()
	meta, data = filepath.Join(dir, "meta"), filepath.Join(dir, "data")
	if opts.DataSize == 0 {
		opts.DataSize = 1 << 30
	}
	if opts.MetadataSize == 0 {
		opts.MetadataSize = 16 << 20
	}
	p, err := Create(meta, data, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, meta, data
}

// TestCreateWriteCommit: an empty pool and one write pass the tools.
func TestCreateWriteCommit(t *testing.T) {
	p, meta, _ := newTestPool(t, Options{})
	thinCheck(t, meta)
	if err := p.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	buf := bytes.Repeat([]byte("x"), 4096)
	if _, err := p.WriteAt(0, buf, 65536*3+100); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	thinCheck(t, meta)
	d := thinDump(t, meta)
	if len(d.Devices) != 1 || d.Devices[0].ID != 0 || len(d.Devices[0].mappings()) != 1 || d.Devices[0].mappings()[3] != 0 {
		t.Fatalf("thin_dump: %+v, want device 0 mapping block 3 to data block 0", d)
	}
}

// TestDefaultSizes creates the seed's pool (100 GiB data, 2 GiB metadata,
// sparse), reopens it, and checks the sizes the tools see.
func TestDefaultSizes(t *testing.T) {
	dir := t.TempDir()
	meta, data := filepath.Join(dir, "meta"), filepath.Join(dir, "data")
	p, err := Create(meta, data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CreateThin(0, 10<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteAt(0, []byte("hello"), 5<<30); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(meta, data, Options{}); !errors.Is(err, errdefs.ErrExists) {
		t.Fatalf("create over an existing pool: %v, want ErrExists", err)
	}
	p, err = Open(meta, data)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	st := p.Status()
	if st.TotalData != DefaultDataSize/DefaultBlockSize || st.TotalMeta != DefaultMetadataSize/metaBlockSize || st.UsedData != 1 {
		t.Fatalf("status: %+v", st)
	}
	if size, err := p.DeviceSize(0); err != nil || size != 10<<30 {
		t.Fatalf("device size after reopen: %d, %v", size, err)
	}
	buf := make([]byte, 5)
	if _, err := p.ReadAt(0, buf, 5<<30); err != nil || string(buf) != "hello" {
		t.Fatalf("read after reopen: %q, %v", buf, err)
	}
	thinCheck(t, meta)
	if d := thinDump(t, meta); d.NrDataBlocks != st.TotalData || d.BlockSize != 128 {
		t.Fatalf("thin_dump: %+v", d)
	}
}

// TestInvalid covers the argument checks: ids, sizes, block sizes, unknown
// devices, transaction ids.
func TestInvalid(t *testing.T) {
	p, _, _ := newTestPool(t, Options{})
	for _, err := range []error{
		p.CreateThin(MaxDeviceID+1, 1<<20),
		p.CreateThin(1, 1000),
		p.SetTransactionID(5, 6),
		p.GrowData(1 << 20),
	} {
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("got %v, want ErrInvalid", err)
		}
	}
	for _, err := range []error{p.CreateSnap(2, 9), p.Delete(9), p.Discard(9, 0, 1<<20)} {
		if !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("got %v, want ErrNotFound", err)
		}
	}
	if _, err := p.ReadAt(9, make([]byte, 10), 0); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("read of a missing device: %v", err)
	}
	if err := p.CreateThin(1, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := p.CreateThin(1, 1<<20); !errors.Is(err, errdefs.ErrExists) {
		t.Errorf("second create_thin 1: %v, want ErrExists", err)
	}
	if err := p.CreateSnap(1, 1); !errors.Is(err, errdefs.ErrExists) {
		t.Errorf("create_snap over an existing id: %v, want ErrExists", err)
	}
	if n, err := p.ReadAt(1, make([]byte, 10), 1<<20-4); n != 4 || !errors.Is(err, io.EOF) {
		t.Errorf("read across the end: %d, %v", n, err)
	}
	if _, err := Create(filepath.Join(t.TempDir(), "m"), filepath.Join(t.TempDir(), "d"), Options{BlockSize: 96 << 10}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("96 KiB blocks: %v, want ErrInvalid", err)
	}
}

// TestSeedWalkthrough follows the seed's dmsetup walkthrough on the pool:
// thin device 0, snapshot 1 of 0, a write in 1, snapshot 2 of 1 sees it
// and 0 does not; the tools agree after every step.
func TestSeedWalkthrough(t *testing.T) {
	p, meta, _ := newTestPool(t, Options{})
	m := model{}
	step := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		checkTools(t, p, m, meta)
		m.check(t, p, 20)
	}
	m[0] = map[uint64][]uint64{}
	step(p.CreateThin(0, 20*p.blockSize))
	m.write(t, p, 0, 0, 3*16, 1) // "mkfs"
	step(nil)
	m[1] = m.clone()[0]
	step(p.CreateSnap(1, 0))
	m.write(t, p, 1, 16+3, 2, 100) // "a file written in 1": copies block 1
	step(nil)
	m[2] = m.clone()[1]
	step(p.CreateSnap(2, 1))
	if st := p.Status(); st.UsedData != 4 {
		t.Fatalf("%d data blocks used, want 3 shared + 1 copied", st.UsedData)
	}
}
