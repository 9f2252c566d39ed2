package thinp

import (
	"encoding/binary"
	"fmt"
)

// The B-trees a transaction changes block by block are the per-device
// mapping trees (vblock -> packed mapping). Their nodes are shadowed: a node
// the last commit wrote, or one another tree shares, is copied before it
// changes, as persistent-data's dm_tm_shadow_block does. The small trees
// (devices, details, space-map indexes) are rebuilt whole at each commit.

// maxCachedNodes bounds the clean nodes kept decoded in memory (about 4 KiB
// each).
const maxCachedNodes = 8192

// node returns the decoded node at block b.
func (md *metadata) node(b uint64) (*node, error) {
	if n := md.dirty[b]; n != nil {
		return n, nil
	}
	if n := md.cache[b]; n != nil {
		return n, nil
	}
	if b >= md.meta.size() {
		return nil, fmt.Errorf("%w: btree node %d past the end", errCorrupt, b)
	}
	buf, err := md.readBlock(b)
	if err != nil {
		return nil, err
	}
	n, err := decodeNode8(buf, b)
	if err != nil {
		return nil, err
	}
	if len(md.cache) >= maxCachedNodes {
		clear(md.cache)
	}
	md.cache[b] = n
	return n, nil
}

// newNode stores n in a newly allocated block.
func (md *metadata) newNode(n *node) (uint64, error) {
	b, err := md.allocMeta()
	if err != nil {
		return 0, err
	}
	md.dirty[b] = n
	return b, nil
}

// shadow returns a node that may be changed in place of node b: b itself if
// this transaction wrote it and nothing shares it, otherwise a copy, which
// takes over b's references to its children (or adds its own when b stays
// shared).
func (md *metadata) shadow(b uint64) (uint64, *node, error) {
	n, err := md.node(b)
	if err != nil {
		return 0, nil, err
	}
	if md.dirty[b] != nil && md.meta.count(b) == 1 {
		return b, n, nil
	}
	c := n.clone()
	nb, err := md.newNode(c)
	if err != nil {
		return 0, nil, err
	}
	if md.meta.count(b) > 1 {
		for _, v := range c.vals {
			md.incValue(c.internal, v)
		}
	}
	if md.meta.dec(b) == 0 {
		delete(md.cache, b)
	}
	return nb, c, nil
}

func (md *metadata) incValue(internal bool, v uint64) {
	if internal {
		md.meta.inc(v)
	} else {
		b, _ := unpackMapping(v)
		md.data.inc(b)
	}
}

// release frees node block b whose children another node took over.
func (md *metadata) release(b uint64) {
	md.meta.dec(b)
	delete(md.dirty, b)
	delete(md.cache, b)
}

// dropRef drops one reference to the tree rooted at b, freeing what no
// other tree shares.
func (md *metadata) dropRef(b uint64) error {
	n, err := md.node(b)
	if err != nil {
		return err
	}
	if md.meta.dec(b) > 0 {
		return nil
	}
	delete(md.dirty, b)
	delete(md.cache, b)
	for _, v := range n.vals {
		if n.internal {
			if err := md.dropRef(v); err != nil {
				return err
			}
		} else {
			db, _ := unpackMapping(v)
			md.data.dec(db)
		}
	}
	return nil
}

// lookup finds key k in the tree rooted at b.
func (md *metadata) lookup(b, k uint64) (uint64, bool, error) {
	for {
		n, err := md.node(b)
		if err != nil {
			return 0, false, err
		}
		if len(n.keys) == 0 || k < n.keys[0] {
			return 0, false, nil
		}
		if n.internal {
			b = n.vals[n.child(k)]
			continue
		}
		i := n.search(k)
		if i < len(n.keys) && n.keys[i] == k {
			return n.vals[i], true, nil
		}
		return 0, false, nil
	}
}

// insert sets k to v in the tree rooted at root and returns the new root
// and whether k is new. A value replaced drops its data block reference.
func (md *metadata) insert(root, k, v uint64) (uint64, bool, error) {
	rb, rn, err := md.shadow(root)
	if err != nil {
		return 0, false, err
	}
	added, splitKey, splitBlock, err := md.insertInto(rn, k, v)
	if err != nil || splitBlock == 0 {
		return rb, added, err
	}
	rb, err = md.newNode(&node{internal: true, keys: []uint64{rn.keys[0], splitKey}, vals: []uint64{rb, splitBlock}})
	return rb, added, err
}

// insertInto inserts into writable node n; when n overflows it moves its
// upper half to a new node and returns that node's first key and block.
func (md *metadata) insertInto(n *node, k, v uint64) (added bool, splitKey, splitBlock uint64, err error) {
	if n.internal {
		i := n.child(k)
		if k < n.keys[i] {
			n.keys[i] = k
		}
		cb, cn, err := md.shadow(n.vals[i])
		if err != nil {
			return false, 0, 0, err
		}
		n.vals[i] = cb
		var sk, sb uint64
		added, sk, sb, err = md.insertInto(cn, k, v)
		if err != nil {
			return false, 0, 0, err
		}
		if sb != 0 {
			n.insertAt(i+1, sk, sb)
		}
	} else {
		i := n.search(k)
		if i < len(n.keys) && n.keys[i] == k {
			if old := n.vals[i]; old != v {
				db, _ := unpackMapping(old)
				md.data.dec(db)
			}
			n.vals[i] = v
		} else {
			n.insertAt(i, k, v)
			added = true
		}
	}
	if len(n.keys) <= maxEntries(8) {
		return added, 0, 0, nil
	}
	h := len(n.keys) / 2
	right := &node{
		internal: n.internal,
		keys:     append([]uint64(nil), n.keys[h:]...),
		vals:     append([]uint64(nil), n.vals[h:]...),
	}
	n.keys, n.vals = n.keys[:h], n.vals[:h]
	sb, err := md.newNode(right)
	return added, right.keys[0], sb, err
}

// remove deletes k, which must be in the tree rooted at root, and returns
// the new root. Nodes other than the root keep at least a third of their
// capacity, as thin_check requires.
func (md *metadata) remove(root, k uint64) (uint64, error) {
	rb, rn, err := md.shadow(root)
	if err != nil {
		return 0, err
	}
	if err := md.removeFrom(rn, k); err != nil {
		return 0, err
	}
	for rn.internal && len(rn.keys) == 1 {
		child := rn.vals[0]
		md.release(rb)
		rb = child
		if rn, err = md.node(child); err != nil {
			return 0, err
		}
	}
	return rb, nil
}

func (md *metadata) removeFrom(n *node, k uint64) error {
	if !n.internal {
		i := n.search(k)
		if i == len(n.keys) || n.keys[i] != k {
			return fmt.Errorf("%w: key %d missing from its mapping tree", errCorrupt, k)
		}
		db, _ := unpackMapping(n.vals[i])
		md.data.dec(db)
		n.removeAt(i)
		return nil
	}
	i := n.child(k)
	cb, cn, err := md.shadow(n.vals[i])
	if err != nil {
		return err
	}
	n.vals[i] = cb
	if err := md.removeFrom(cn, k); err != nil {
		return err
	}
	if len(cn.keys) >= maxEntries(8)/3 || len(n.keys) == 1 {
		return nil
	}
	return md.rebalance(n, i)
}

// rebalance merges child i of writable node n with a neighbour, or evens
// the two out when they do not fit in one node.
func (md *metadata) rebalance(n *node, i int) error {
	l, r := i, i+1
	if r == len(n.keys) {
		l, r = i-1, i
	}
	lb, ln, err := md.shadow(n.vals[l])
	if err != nil {
		return err
	}
	n.vals[l] = lb
	rb, rn, err := md.shadow(n.vals[r])
	if err != nil {
		return err
	}
	n.vals[r] = rb
	if len(ln.keys)+len(rn.keys) <= maxEntries(8) {
		ln.keys = append(ln.keys, rn.keys...)
		ln.vals = append(ln.vals, rn.vals...)
		md.release(rb)
		n.removeAt(r)
		return nil
	}
	keys := append(append([]uint64(nil), ln.keys...), rn.keys...)
	vals := append(append([]uint64(nil), ln.vals...), rn.vals...)
	h := len(keys) / 2
	ln.keys, ln.vals = keys[:h:h], vals[:h:h]
	rn.keys, rn.vals = keys[h:], vals[h:]
	n.keys[r] = rn.keys[0]
	return nil
}

// walk calls fn for every entry of the tree rooted at b with a key in
// [lo, hi), in order; shared says whether a node on the way is shared with
// another tree.
func (md *metadata) walk(b, lo, hi uint64, shared bool, fn func(k, v uint64, shared bool)) error {
	n, err := md.node(b)
	if err != nil {
		return err
	}
	shared = shared || md.meta.count(b) > 1
	for i, k := range n.keys {
		if !n.internal {
			if k >= lo && k < hi {
				fn(k, n.vals[i], shared)
			}
			continue
		}
		if k >= hi {
			break
		}
		if i+1 < len(n.keys) && n.keys[i+1] <= lo {
			continue
		}
		if err := md.walk(n.vals[i], lo, hi, shared, fn); err != nil {
			return err
		}
	}
	return nil
}

// walkRaw visits a tree of any value size, as read at Open, and collects
// its node blocks.
func (md *metadata) walkRaw(b uint64, valueSize int, blocks *[]uint64, fn func(k uint64, v []byte) error) error {
	buf, err := md.readBlock(b)
	if err != nil {
		return err
	}
	internal, keys, values, vs, err := decodeNode(buf, b)
	if err != nil {
		return err
	}
	if want := map[bool]int{true: 8, false: valueSize}[internal]; vs != want {
		return fmt.Errorf("%w: btree node %d: value size %d, want %d", errCorrupt, b, vs, want)
	}
	*blocks = append(*blocks, b)
	for i, k := range keys {
		v := values[i*vs : (i+1)*vs]
		if internal {
			err = md.walkRaw(binary.LittleEndian.Uint64(v), valueSize, blocks, fn)
		} else {
			err = fn(k, v)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// build writes a new tree holding sorted keys and their values, with every
// node at least half full, and returns its root. Its blocks are appended to
// owned.
func (md *metadata) build(keys []uint64, values []byte, valueSize int, writes map[uint64][]byte, owned *[]uint64) (uint64, error) {
	internal := false
	for {
		max := maxEntries(valueSize)
		nodes := max1((len(keys) + max - 1) / max)
		var upKeys []uint64
		var upVals []byte
		start := 0
		for i := range nodes {
			end := start + len(keys)/nodes
			if i < len(keys)%nodes {
				end++
			}
			loc, err := md.allocMeta()
			if err != nil {
				return 0, err
			}
			*owned = append(*owned, loc)
			writes[loc] = encodeNode(loc, internal, keys[start:end], values[start*valueSize:end*valueSize], valueSize)
			first := uint64(0)
			if end > start {
				first = keys[start]
			}
			upKeys = append(upKeys, first)
			upVals = binary.LittleEndian.AppendUint64(upVals, loc)
			start = end
		}
		if nodes == 1 {
			return binary.LittleEndian.Uint64(upVals), nil
		}
		keys, values, valueSize, internal = upKeys, upVals, 8, true
	}
}

func max1(n int) int { return max(n, 1) }
