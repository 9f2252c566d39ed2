package thinp

import (
	"fmt"
	"testing"
)

// BenchmarkSnapshot measures create_snap + commit of a device with 1 GiB
// and 64 GiB mapped (64 KiB blocks), and the metadata blocks each touches.
func BenchmarkSnapshot(b *testing.B) {
	for _, gib := range []uint64{1, 64} {
		b.Run(fmt.Sprintf("mapped=%dGiB", gib), func(b *testing.B) {
			p, _, _ := newTestPool(b, Options{DataSize: 128 << 30, MetadataSize: 256 << 20})
			if err := p.CreateThin(0, 128<<30); err != nil {
				b.Fatal(err)
			}
			if _, err := mapMeta(p, 0, 0, gib<<30/uint64(p.blockSize)); err != nil {
				b.Fatal(err)
			}
			if err := p.Commit(); err != nil {
				b.Fatal(err)
			}
			var allocs, writes uint64
			b.ResetTimer()
			for range b.N {
				before := p.md.metaAllocs
				if err := p.CreateSnap(1, 0); err != nil {
					b.Fatal(err)
				}
				if err := p.Commit(); err != nil {
					b.Fatal(err)
				}
				allocs += p.md.metaAllocs - before
				writes += p.md.lastCommitWrites
				b.StopTimer()
				if err := p.Delete(1); err != nil {
					b.Fatal(err)
				}
				if err := p.Commit(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(allocs)/float64(b.N), "meta-allocs/op")
			b.ReportMetric(float64(writes)/float64(b.N), "meta-writes/op")
		})
	}
}

// BenchmarkIO measures writes and reads through the pool: 1 MiB writes
// provisioning new blocks, overwriting mapped ones, reads; and 4 KiB writes
// to mapped blocks, exclusive or shared with a snapshot (copied whole).
func BenchmarkIO(b *testing.B) {
	const span = 1 << 30 // prefilled
	setup := func(b *testing.B, prefill, snapshot bool) *Pool {
		p, _, _ := newTestPool(b, Options{DataSize: 64 << 30})
		if err := p.CreateThin(0, 64<<30); err != nil {
			b.Fatal(err)
		}
		if prefill {
			buf := make([]byte, 1<<20)
			for off := int64(0); off < span; off += int64(len(buf)) {
				if _, err := p.WriteAt(0, buf, off); err != nil {
					b.Fatal(err)
				}
			}
		}
		if snapshot {
			if err := p.CreateSnap(1, 0); err != nil {
				b.Fatal(err)
			}
		}
		return p
	}
	run := func(b *testing.B, size, stride, wrap int64, op func([]byte, int64) (int, error)) {
		buf := make([]byte, size)
		for i := range buf {
			buf[i] = byte(i)
		}
		b.SetBytes(size)
		b.ResetTimer()
		for i := range int64(b.N) {
			if _, err := op(buf, i*stride%wrap); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("write-new-1M", func(b *testing.B) {
		p := setup(b, false, false)
		run(b, 1<<20, 1<<20, 64<<30, func(buf []byte, off int64) (int, error) { return p.WriteAt(0, buf, off) })
	})
	b.Run("overwrite-1M", func(b *testing.B) {
		p := setup(b, true, false)
		run(b, 1<<20, 1<<20, span, func(buf []byte, off int64) (int, error) { return p.WriteAt(0, buf, off) })
	})
	b.Run("read-1M", func(b *testing.B) {
		p := setup(b, true, false)
		run(b, 1<<20, 1<<20, span, func(buf []byte, off int64) (int, error) { return p.ReadAt(0, buf, off) })
	})
	b.Run("overwrite-4K", func(b *testing.B) {
		p := setup(b, true, false)
		run(b, 4096, p.blockSize, span, func(buf []byte, off int64) (int, error) { return p.WriteAt(0, buf, off) })
	})
	b.Run("cow-4K", func(b *testing.B) {
		p := setup(b, true, true)
		run(b, 4096, p.blockSize, span, func(buf []byte, off int64) (int, error) { return p.WriteAt(0, buf, off) })
	})
}
