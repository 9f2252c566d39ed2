package layer

import (
	"fmt"
	"hash"
	"hash/crc64"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/strata-storage/strata/errdefs"
)

// tarRecorder hashes, counts and records in tar-split the tar that a
// driver.DiffCopier writes. Told by Entry where each entry's content
// starts, it packs the entries that tar-split's parser would find, without
// parsing the tar: the raw bytes between contents (padding and headers) as
// segments, and each entry's name, size and content checksum.
type tarRecorder struct {
	packer   storage.Packer
	digester digest.Digester
	size     int64

	segment []byte // raw bytes since the last content
	name    string // the entry whose content is being written
	length  int64  // its size
	left    int64  // the bytes of its content still to come
	crc     hash.Hash64
}

func newTarRecorder(p storage.Packer) *tarRecorder {
	return &tarRecorder{packer: p, digester: digest.SHA256.Digester(), crc: crc64.New(storage.CRCTable)}
}

func (r *tarRecorder) Write(p []byte) (int, error) {
	n := len(p)
	r.digester.Hash().Write(p)
	r.size += int64(n)
	for len(p) > 0 {
		if r.left == 0 {
			r.segment = append(r.segment, p...)
			break
		}
		k := int(min(int64(len(p)), r.left))
		r.crc.Write(p[:k])
		r.left -= int64(k)
		p = p[k:]
		if r.left == 0 {
			if err := r.addFile(r.name, r.length, r.crc.Sum(nil)); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// Entry starts the entry name, whose header has just been written.
func (r *tarRecorder) Entry(name string, size int64) error {
	if r.left != 0 {
		return fmt.Errorf("tar entry %q: %d bytes of content missing: %w", r.name, r.left, errdefs.ErrInvalid)
	}
	if err := r.flushSegment(); err != nil {
		return err
	}
	if size == 0 {
		return r.addFile(name, 0, nil)
	}
	r.name, r.length, r.left = name, size, size
	r.crc.Reset()
	return nil
}

// Close records what follows the last entry: padding and end-of-archive.
func (r *tarRecorder) Close() error {
	if r.left != 0 {
		return fmt.Errorf("tar entry %q: %d bytes of content missing: %w", r.name, r.left, errdefs.ErrInvalid)
	}
	return r.flushSegment()
}

func (r *tarRecorder) flushSegment() error {
	if len(r.segment) == 0 {
		return nil
	}
	// The packer encodes the entry at once: the buffer can be reused.
	_, err := r.packer.AddEntry(storage.Entry{Type: storage.SegmentType, Payload: r.segment})
	r.segment = r.segment[:0]
	return err
}

func (r *tarRecorder) addFile(name string, size int64, sum []byte) error {
	e := storage.Entry{Type: storage.FileType, Size: size, Payload: sum}
	e.SetName(name)
	_, err := r.packer.AddEntry(e)
	return err
}
