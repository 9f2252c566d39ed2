package thinp

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// withoutDirectIO turns a new pool's direct I/O off, as a file system
// without it would leave it.
func withoutDirectIO(p *Pool) {
	if p.data.direct != nil {
		p.data.direct.Close()
		p.data.direct, p.data.align = nil, 1
	}
}

// ioModes runs test on a pool in direct I/O and on one without.
func ioModes(t *testing.T, test func(t *testing.T, direct bool)) {
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) { test(t, direct) })
	}
}

func newModePool(t *testing.T, direct bool) (*Pool, string, string) {
	p, meta, data := newTestPool(t, Options{})
	if direct && p.data.direct == nil {
		var st unix.Statx_t
		if err := unix.Statx(int(p.data.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st); err == nil && st.Dio_offset_align == 0 {
			t.Skipf("the file system of %s has no direct I/O", data)
		}
		t.Fatal("the data file is not in direct I/O")
	}
	if !direct {
		withoutDirectIO(p)
	}
	return p, meta, data
}

// TestDataFileAllocatedAhead: the first new block allocates a chunk of the
// data file, so that the next direct writes land in allocated space; while
// the allocator moves on from chunk to chunk, each allocation takes twice
// as many chunks as the one before, up to the end of the file, and one
// chunk again after a jump.
func TestDataFileAllocatedAhead(t *testing.T) {
	p, _, data := newModePool(t, true) // 1 GiB: 16 chunks
	probe, err := os.Create(filepath.Join(t.TempDir(), "probe"))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	if err := unix.Fallocate(int(probe.Fd()), 0, 0, 4096); errors.Is(err, unix.EOPNOTSUPP) {
		t.Skipf("the file system of %s has no fallocate", data)
	}
	if err := p.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteAt(0, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	chunks := func(want int64) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Stat(data, &st); err != nil {
			t.Fatal(err)
		}
		if got := st.Blocks * 512; got < want*allocChunk || got >= (want+1)*allocChunk {
			t.Fatalf("data file holds %d bytes, want %d chunks of %d", got, want, allocChunk)
		}
	}
	chunks(1)
	for _, step := range []struct{ chunk, total int64 }{
		{1, 3},   // chunks 1-2
		{2, 3},   // allocated
		{3, 7},   // 3-6
		{12, 8},  // after a jump: 12
		{13, 10}, // 13-14
		{15, 11}, // 15, the last
	} {
		p.data.allocate(step.chunk*allocChunk + 4096)
		chunks(step.total)
	}
}

// TestUnalignedIO writes and reads at any byte offset and length, from
// and into buffers at any address, across new, mapped and shared blocks,
// against a model of the device's bytes; the pool then reopens with the
// same contents.
func TestUnalignedIO(t *testing.T) {
	ioModes(t, func(t *testing.T, direct bool) {
		p, meta, data := newModePool(t, direct)
		const size = 4 << 20
		if err := p.CreateThin(0, size); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(7, 11))
		want := map[uint32][]byte{0: make([]byte, size)}
		buf := make([]byte, 3*p.blockSize+1)
		check := func(id uint32, off, n int64) {
			t.Helper()
			got := buf[1 : 1+n]
			if _, err := p.ReadAt(id, got, off); err != nil {
				t.Fatal(err)
			}
			if i := mismatch(got, want[id][off:off+n]); i >= 0 {
				t.Fatalf("device %d byte %d: got %d, want %d", id, off+int64(i), got[i], want[id][off+int64(i)])
			}
		}
		for step := range 400 {
			off := rng.Int64N(size - 1)
			n := 1 + rng.Int64N(min(size-off, int64(len(buf))-1))
			switch r := rng.IntN(20); {
			case r < 12:
				b := buf[1 : 1+n] // never aligned in memory
				fill := byte(step)
				for i := range b {
					b[i] = fill + byte(i/512)
				}
				if _, err := p.WriteAt(0, b, off); err != nil {
					t.Fatal(err)
				}
				copy(want[0][off:], b)
			case r < 18:
				check(0, off, n)
			case r == 18 && len(want) < 5:
				id := uint32(len(want))
				if err := p.CreateSnap(id, 0); err != nil {
					t.Fatal(err)
				}
				want[id] = bytes.Clone(want[0])
			default:
				if err := p.Commit(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		thinCheck(t, meta)
		reopened, err := Open(meta, data)
		if err != nil {
			t.Fatal(err)
		}
		defer reopened.Close()
		got := make([]byte, size)
		for id, w := range want {
			if _, err := reopened.ReadAt(id, got, 0); err != nil {
				t.Fatal(err)
			}
			if i := mismatch(got, w); i >= 0 {
				t.Fatalf("reopened, device %d byte %d: got %d, want %d", id, i, got[i], w[i])
			}
		}
	})
}

// TestConcurrentUnalignedWriters: writers of interleaved 100-byte pieces,
// which share every sector, run beside writers of whole new blocks; no
// piece is lost to another writer's read-modify-write of a sector.
func TestConcurrentUnalignedWriters(t *testing.T) {
	ioModes(t, func(t *testing.T, direct bool) {
		p, meta, _ := newModePool(t, direct)
		if err := p.CreateThin(0, 1<<30); err != nil {
			t.Fatal(err)
		}
		// Half of the shared span is mapped before, half is new.
		const pieces, piece, writers = 4, 100, 4
		span := 4 * p.blockSize
		if _, err := p.WriteAt(0, make([]byte, span/2), 0); err != nil {
			t.Fatal(err)
		}
		var fns []func() error
		for w := range int64(writers) {
			fns = append(fns, func() error {
				b := bytes.Repeat([]byte{byte('a' + w)}, piece)
				for off := w * piece; off+piece <= span; off += pieces * piece {
					if _, err := p.WriteAt(0, b, off); err != nil {
						return err
					}
				}
				return nil
			}, func() error {
				b := bytes.Repeat([]byte{byte('A' + w)}, int(2*p.blockSize))
				for i := range int64(16) {
					if _, err := p.WriteAt(0, b, (16+w*32+2*i)*p.blockSize); err != nil {
						return err
					}
				}
				return nil
			})
		}
		concurrently(t, fns...)
		got := make([]byte, span)
		if _, err := p.ReadAt(0, got, 0); err != nil {
			t.Fatal(err)
		}
		for off := int64(0); off+piece <= span; off += piece {
			w := off / piece % pieces
			if want := bytes.Repeat([]byte{byte('a' + w)}, piece); !bytes.Equal(got[off:off+piece], want) {
				t.Fatalf("bytes %d+%d: %q, want writer %d's", off, piece, got[off:off+piece], w)
			}
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		checkTools(t, p, nil, meta)
	})
}

// TestWritesProvisionRuns: concurrent writes of several new blocks each
// get consecutive data blocks, written by one pwrite, however the writers
// interleave.
func TestWritesProvisionRuns(t *testing.T) {
	p, meta, _ := newTestPool(t, Options{})
	if err := p.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	const writers, requests, blocks = 32, 4, 8
	var fns []func() error
	for w := range int64(writers) {
		fns = append(fns, func() error {
			b := make([]byte, blocks*p.blockSize)
			for r := range int64(requests) {
				if _, err := p.WriteAt(0, b, (r*writers+w)*blocks*p.blockSize); err != nil {
					return err
				}
			}
			return nil
		})
	}
	concurrently(t, fns...)
	mapped := poolMappings(t, p)[0]
	for req := range uint64(writers * requests) {
		first := mapped[req*blocks]
		for i := range uint64(blocks) {
			if got := mapped[req*blocks+i]; got != first+i {
				t.Fatalf("request %d: block %d is data block %d, want %d", req, i, got, first+i)
			}
		}
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, nil, meta)
}

// mismatch returns the index of the first byte where a and b differ, -1
// when they are equal.
func mismatch(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
