package thinp

import (
	"encoding/binary"
	"fmt"
)

// node is a decoded B-tree node whose values are 8 bytes: the nodes of the
// mapping trees (child block numbers in internal nodes, packed mappings or
// subtree roots in leaves).
type node struct {
	internal bool
	keys     []uint64
	vals     []uint64
}

func (n *node) clone() *node {
	return &node{
		internal: n.internal,
		keys:     append(make([]uint64, 0, len(n.keys)+1), n.keys...),
		vals:     append(make([]uint64, 0, len(n.vals)+1), n.vals...),
	}
}

// search returns the index of the first key >= k.
func (n *node) search(k uint64) int {
	lo, hi := 0, len(n.keys)
	for lo < hi {
		m := (lo + hi) / 2
		if n.keys[m] < k {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// child returns the index of the child of internal node n that covers k:
// the last key <= k, or 0.
func (n *node) child(k uint64) int {
	i := n.search(k)
	if i < len(n.keys) && n.keys[i] == k {
		return i
	}
	return max(i-1, 0)
}

func (n *node) insertAt(i int, k, v uint64) {
	n.keys = append(n.keys, 0)
	copy(n.keys[i+1:], n.keys[i:])
	n.keys[i] = k
	n.vals = append(n.vals, 0)
	copy(n.vals[i+1:], n.vals[i:])
	n.vals[i] = v
}

func (n *node) removeAt(i int) {
	n.keys = append(n.keys[:i], n.keys[i+1:]...)
	n.vals = append(n.vals[:i], n.vals[i+1:]...)
}

func (n *node) encode(loc uint64) []byte {
	values := make([]byte, 0, 8*len(n.vals))
	for _, v := range n.vals {
		values = binary.LittleEndian.AppendUint64(values, v)
	}
	return encodeNode(loc, n.internal, n.keys, values, 8)
}

// encodeNode lays out a node block: header, max_entries keys, then values.
func encodeNode(loc uint64, internal bool, keys []uint64, values []byte, valueSize int) []byte {
	b := make([]byte, metaBlockSize)
	le := binary.LittleEndian
	flags := uint32(leafNode)
	if internal {
		flags = internalNode
	}
	max := maxEntries(valueSize)
	le.PutUint32(b[4:], flags)
	le.PutUint64(b[8:], loc)
	le.PutUint32(b[16:], uint32(len(keys)))
	le.PutUint32(b[20:], uint32(max))
	le.PutUint32(b[24:], uint32(valueSize))
	for i, k := range keys {
		le.PutUint64(b[nodeHeaderSize+8*i:], k)
	}
	copy(b[nodeHeaderSize+8*max:], values)
	seal(b, nodeCsumXor)
	return b
}

// decodeNode checks and splits a node block read from loc.
func decodeNode(b []byte, loc uint64) (internal bool, keys []uint64, values []byte, valueSize int, err error) {
	if err := verify(b, nodeCsumXor, loc, "btree node"); err != nil {
		return false, nil, nil, 0, err
	}
	le := binary.LittleEndian
	flags := le.Uint32(b[4:])
	nr, max, vs := int(le.Uint32(b[16:])), int(le.Uint32(b[20:])), int(le.Uint32(b[24:]))
	if (flags != internalNode && flags != leafNode) || vs == 0 || vs > 64 || max != maxEntries(vs) || nr > max ||
		(flags == internalNode && vs != 8) {
		return false, nil, nil, 0, fmt.Errorf("%w: btree node %d: bad header", errCorrupt, loc)
	}
	keys = make([]uint64, nr)
	for i := range keys {
		keys[i] = le.Uint64(b[nodeHeaderSize+8*i:])
	}
	off := nodeHeaderSize + 8*max
	return flags == internalNode, keys, b[off : off+nr*vs], vs, nil
}

func decodeNode8(b []byte, loc uint64) (*node, error) {
	internal, keys, values, vs, err := decodeNode(b, loc)
	if err != nil {
		return nil, err
	}
	if vs != 8 {
		return nil, fmt.Errorf("%w: btree node %d: value size %d, want 8", errCorrupt, loc, vs)
	}
	n := &node{internal: internal, keys: keys, vals: make([]uint64, len(keys))}
	for i := range n.vals {
		n.vals[i] = binary.LittleEndian.Uint64(values[8*i:])
	}
	return n, nil
}
