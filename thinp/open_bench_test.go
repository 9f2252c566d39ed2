package thinp

import (
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkOpen measures Open, Usage and Close of pools of 10 GiB, 100 GiB
// (the default) and 1 TiB of data with 2 GiB of metadata, one device
// mapping 1 GiB: the cost every CLI command pays, which must not grow with
// the pool's size.
func BenchmarkOpen(b *testing.B) {
	for _, gib := range []int64{10, 100, 1024} {
		b.Run(fmt.Sprintf("data=%dGiB", gib), func(b *testing.B) {
			dir := b.TempDir()
			meta, data := filepath.Join(dir, "meta"), filepath.Join(dir, "data")
			p, err := Create(meta, data, Options{DataSize: gib << 30})
			if err != nil {
				b.Fatal(err)
			}
			if err := p.CreateThin(0, 10<<30); err != nil {
				b.Fatal(err)
			}
			if _, err := mapMeta(p, 0, 0, 1<<30/uint64(p.blockSize)); err != nil {
				b.Fatal(err)
			}
			if err := p.Close(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				p, err := Open(meta, data)
				if err != nil {
					b.Fatal(err)
				}
				p.Usage()
				if err := p.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
