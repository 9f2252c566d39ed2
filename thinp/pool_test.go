package thinp

import (
	"bytes"
	"path/filepath"
	"testing"
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
	t.Logf("%+v", d)
}
