package thinp

import (
	"bytes"
	"encoding/binary"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

// regionSize is the unit the model tracks contents in.
const regionSize = 4096

// model is what a pool's devices should read back: per device, per block,
// a stamp per 4 KiB region (0: zeros).
type model map[uint32]map[uint64][]uint64

func (m model) clone() model {
	c := model{}
	for id, blocks := range m {
		c[id] = map[uint64][]uint64{}
		for b, r := range blocks {
			c[id][b] = slices.Clone(r)
		}
	}
	return c
}

func stampRegion(buf []byte, stamp uint64) {
	for i := 0; i < len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], stamp)
	}
}

// write writes regions [first, first+n) of device id with stamp, in the
// pool and the model.
func (m model) write(t *testing.T, p *Pool, id uint32, first, n int64, stamp uint64) {
	t.Helper()
	buf := make([]byte, n*regionSize)
	for i := range n {
		stampRegion(buf[i*regionSize:(i+1)*regionSize], stamp+uint64(i))
	}
	if _, err := p.WriteAt(id, buf, first*regionSize); err != nil {
		t.Fatalf("write device %d regions %d+%d: %v", id, first, n, err)
	}
	per := p.blockSize / regionSize
	for i := range n {
		r := first + i
		blk := uint64(r / per)
		if m[id][blk] == nil {
			m[id][blk] = make([]uint64, per)
		}
		m[id][blk][r%per] = stamp + uint64(i)
	}
}

// check compares every device's contents with the model.
func (m model) check(t *testing.T, p *Pool, vblocks uint64) {
	t.Helper()
	if got, want := p.Devices(), slices.Sorted(maps.Keys(m)); !slices.Equal(got, want) {
		t.Fatalf("devices %v, want %v", got, want)
	}
	buf := make([]byte, p.blockSize)
	want := make([]byte, regionSize)
	for id, blocks := range m {
		for b := range vblocks {
			if _, err := p.ReadAt(id, buf, int64(b)*p.blockSize); err != nil {
				t.Fatal(err)
			}
			for r := range p.blockSize / regionSize {
				var stamp uint64
				if blocks[b] != nil {
					stamp = blocks[b][r]
				}
				stampRegion(want, stamp)
				if !bytes.Equal(buf[r*regionSize:(r+1)*regionSize], want) {
					t.Fatalf("device %d block %d region %d: want stamp %d, got %x...", id, b, r, stamp, buf[r*regionSize:r*regionSize+16])
				}
			}
		}
	}
}

// poolMappings is the pool's own view: device -> vblock -> data block.
func poolMappings(t *testing.T, p *Pool) map[uint32]map[uint64]uint64 {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	all := map[uint32]map[uint64]uint64{}
	for id, root := range p.md.roots {
		m := map[uint64]uint64{}
		if err := p.md.walk(root, 0, ^uint64(0), false, func(k, v uint64, _ bool) {
			m[k], _ = unpackMapping(v)
		}); err != nil {
			t.Fatal(err)
		}
		all[id] = m
	}
	return all
}

// checkTools runs thin_check and compares thin_dump with the pool and the
// model (when not nil): the same devices, the same mappings, the blocks the
// model holds, and the pool's status agrees.
func checkTools(t *testing.T, p *Pool, m model, meta string) {
	t.Helper()
	thinCheck(t, meta)
	d := thinDump(t, meta)
	own := poolMappings(t, p)
	if len(d.Devices) != len(own) {
		t.Fatalf("thin_dump shows %d devices, the pool has %d", len(d.Devices), len(own))
	}
	users := map[uint64]int{}
	for _, dev := range d.Devices {
		got := dev.mappings()
		if !maps.Equal(got, own[dev.ID]) {
			t.Fatalf("device %d: thin_dump mappings differ from the pool's (%d vs %d)", dev.ID, len(got), len(own[dev.ID]))
		}
		if uint64(len(got)) != dev.MappedBlocks {
			t.Fatalf("device %d: mapped_blocks %d, %d mappings", dev.ID, dev.MappedBlocks, len(got))
		}
		if m != nil && !slices.Equal(slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(m[dev.ID]))) {
			t.Fatalf("device %d: mapped blocks differ from the model", dev.ID)
		}
		for _, db := range got {
			users[db]++
		}
	}
	st := p.Status()
	ls := thinLs(t, meta)
	for _, ds := range st.Devices {
		if got := [3]uint64{ds.MappedBlocks, ds.Exclusive, ds.Shared}; got != ls[ds.ID] {
			t.Fatalf("device %d: status mapped/exclusive/shared %v, thin_ls %v", ds.ID, got, ls[ds.ID])
		}
	}
	if st.UsedData != uint64(len(users)) {
		t.Fatalf("status: %d data blocks used, %d mapped", st.UsedData, len(users))
	}
	for _, ds := range st.Devices {
		var shared uint64
		for _, db := range own[ds.ID] {
			if users[db] > 1 {
				shared++
			}
		}
		if ds.Shared != shared || ds.Exclusive != uint64(len(own[ds.ID]))-shared {
			t.Fatalf("device %d: status shared/exclusive %d/%d, want %d/%d", ds.ID, ds.Shared, ds.Exclusive, shared, uint64(len(own[ds.ID]))-shared)
		}
	}
}

// TestRandomOperations runs random sequences of create, snapshot (of
// snapshots), write, discard, delete, grow, commit and reopen against the
// model, with thin_check, thin_dump and thin_ls after every commit.
func TestRandomOperations(t *testing.T) {
	for seed := range uint64(3) {
		t.Run("", func(t *testing.T) { randomOperations(t, seed) })
	}
}

func randomOperations(t *testing.T, seed uint64) {
	const vblocks = 700 // enough for three-level trees under snapshots
	p, meta, data := newTestPool(t, Options{DataSize: 256 << 20})
	rng := rand.New(rand.NewPCG(seed, 42))
	m := model{}
	nextID := uint32(0)
	stamp := uint64(1)
	per := p.blockSize / regionSize
	pick := func() uint32 {
		ids := slices.Sorted(maps.Keys(m))
		return ids[rng.IntN(len(ids))]
	}
	for step := range 400 {
		switch op := rng.IntN(100); {
		case len(m) == 0 || op < 5 && len(m) < 8:
			if err := p.CreateThin(nextID, vblocks*p.blockSize); err != nil {
				t.Fatal(err)
			}
			m[nextID] = map[uint64][]uint64{}
			nextID++
		case op < 12 && len(m) < 8:
			origin := pick()
			if err := p.CreateSnap(nextID, origin); err != nil {
				t.Fatal(err)
			}
			m[nextID] = model{0: m[origin]}.clone()[0]
			nextID++
		case op < 15 && len(m) > 1:
			id := pick()
			if err := p.Delete(id); err != nil {
				t.Fatal(err)
			}
			delete(m, id)
		case op < 22:
			id := pick()
			first := rng.Int64N(vblocks)
			n := rng.Int64N(vblocks/4) + 1
			if err := p.Discard(id, first*p.blockSize, n*p.blockSize); err != nil {
				t.Fatal(err)
			}
			for b := uint64(first); b < uint64(min(first+n, vblocks)); b++ {
				delete(m[id], b)
			}
		case op < 30:
			if err := p.Commit(); err != nil {
				t.Fatal(err)
			}
			checkTools(t, p, m, meta)
		case op < 33:
			st := p.Status()
			if err := p.GrowData(int64(st.TotalData+100) * p.blockSize); err != nil {
				t.Fatal(err)
			}
			if err := p.GrowMetadata(int64(st.TotalMeta+100) * metaBlockSize); err != nil {
				t.Fatal(err)
			}
		case op < 35:
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			var err error
			if p, err = Open(meta, data); err != nil {
				t.Fatal(err)
			}
			m.check(t, p, vblocks)
		default:
			id := pick()
			// Mostly whole blocks in runs, sometimes single regions.
			if rng.IntN(3) == 0 {
				m.write(t, p, id, rng.Int64N(vblocks*per), 1, stamp)
				stamp++
			} else {
				first := rng.Int64N(vblocks-40) * per
				n := (rng.Int64N(40) + 1) * per
				m.write(t, p, id, first, n, stamp)
				stamp += uint64(n)
			}
		}
		if step%50 == 0 {
			m.check(t, p, vblocks)
		}
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, m, meta)
	m.check(t, p, vblocks)
	t.Cleanup(func() { p.Close() })
}
