package thinp

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSnapshot measures create_snap + commit of a device with 1 GiB
// and 100 GiB mapped (64 KiB blocks), and the metadata blocks each touches
// (bench/thin.sh reports it).
func BenchmarkSnapshot(b *testing.B) {
	for _, gib := range []uint64{1, 100} {
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
// to mapped blocks, exclusive or shared with a snapshot (copied whole). The
// file-* cases write a plain sparse file the same way: writing where the
// file has a hole costs the kernel about twice what rewriting cached pages
// does (ext4 delayed allocation, new page-cache pages and buffer heads),
// pool or not, so compare pool-new/file-new and overwrite/file-overwrite.
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
		cpu := cpuTime()
		for i := range int64(b.N) {
			if _, err := op(buf, i*stride%wrap); err != nil {
				b.Fatal(err)
			}
		}
		// On a shared machine the CPU time is steadier than the wall time.
		b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
	}
	sparseFile := func(b *testing.B, prefill bool) *os.File {
		f, err := os.Create(filepath.Join(b.TempDir(), "file"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		if err := f.Truncate(64 << 30); err != nil {
			b.Fatal(err)
		}
		if prefill {
			buf := make([]byte, 1<<20)
			for off := int64(0); off < span; off += int64(len(buf)) {
				if _, err := f.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
		}
		return f
	}
	b.Run("file-new-1M", func(b *testing.B) {
		f := sparseFile(b, false)
		run(b, 1<<20, 1<<20, 64<<30, f.WriteAt)
	})
	b.Run("file-overwrite-1M", func(b *testing.B) {
		f := sparseFile(b, true)
		run(b, 1<<20, 1<<20, span, f.WriteAt)
	})
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

// cpuTime returns the user and system time this process has used.
func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWriteCommit measures what a loop device asks of the pool: 256
// MiB written in 512 KiB requests (FUSE's largest) by a number of writers
// at once, then the commit that makes them durable. A file system's
// writeback has many requests in flight, a writer in direct I/O (dd
// oflag=direct bs=1M) two: to new blocks, to mapped ones in place, and to
// blocks shared with a snapshot.
func BenchmarkWriteCommit(b *testing.B) {
	const size, request = 256 << 20, 512 << 10
	for _, c := range []struct {
		name           string
		writers        int64
		mapped, shared bool
	}{
		{"new/writers=16", 16, false, false},
		{"new/writers=2", 2, false, false},
		{"overwrite/writers=2", 2, true, false},
		{"cow/writers=2", 2, true, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			p, _, _ := newTestPool(b, Options{DataSize: 64 << 30})
			if err := p.CreateThin(0, 64<<30); err != nil {
				b.Fatal(err)
			}
			write := func(base int64) {
				var fns []func() error
				for g := range c.writers {
					fns = append(fns, func() error {
						buf := make([]byte, request)
						for off := g * request; off < size; off += c.writers * request {
							if _, err := p.WriteAt(0, buf, base+off); err != nil {
								return err
							}
						}
						return nil
					})
				}
				concurrently(b, fns...)
				if err := p.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			if c.mapped {
				write(0)
			}
			b.SetBytes(size)
			b.ResetTimer()
			for i := range int64(b.N) {
				base := i * size % (60 << 30)
				if c.mapped {
					base = 0
				}
				if c.shared {
					b.StopTimer()
					if err := p.CreateSnap(uint32(i+1), 0); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				write(base)
			}
		})
	}
}
