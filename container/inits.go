package container

import (
	"encoding/binary"
	"errors"

	bolt "go.etcd.io/bbolt"
)

// The init layer holds what Docker writes into every container before it
// starts (/etc/hosts, /.dockerenv, ...). Its content depends only on the
// image, so the containers of one image share one: a create makes a single
// read-write layer, which is most of what makes it cheap, and an rm removes
// one. The init layer goes with the image's last container.
//
// container-inits/<parent> holds the init layer on driver layer <parent>
// and how many recorded containers use it, changed in the transactions that
// record and remove containers. An init layer that a Create made but never
// recorded is named only in its creating/ file, and goes with it.

var bucketInits = []byte("container-inits")

// errInitChanged reports that the init layer a Create built on was replaced
// or removed before the container was recorded: the Create starts again.
var errInitChanged = errors.New("the image's init layer changed meanwhile")

// initKey is the key of the init layer on driver layer parent ("" for an
// image without layers).
func initKey(parent string) []byte {
	if parent == "" {
		return []byte("scratch")
	}
	return []byte(parent)
}

// newInitID returns a new driver id for an init layer on parent: never the
// id of one a crash left behind, whatever its state.
func newInitID(parent string) string {
	return string(initKey(parent)) + "-init-" + newID()[:12]
}

// currentInit returns the recorded init layer on parent, "" if none.
func (s *Store) currentInit(parent string) (string, error) {
	var id string
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketInits); b != nil {
			id, _ = decodeInit(b.Get(initKey(parent)))
		}
		return nil
	})
	return id, err
}

// useInit counts c as a user of its init layer: a fresh one becomes the
// image's, an existing one must still be it.
func useInit(tx *bolt.Tx, c Container, fresh bool) error {
	b, err := tx.CreateBucketIfNotExists(bucketInits)
	if err != nil {
		return err
	}
	k := initKey(c.TopCache)
	id, n := decodeInit(b.Get(k))
	if (fresh && id != "") || (!fresh && id != c.Init) {
		return errInitChanged
	}
	return b.Put(k, encodeInit(c.Init, n+1))
}

// releaseInit counts c out of its init layer's users and reports whether
// it was the last, in which case the layer is no longer recorded.
func releaseInit(tx *bolt.Tx, c Container) (last bool, err error) {
	b := tx.Bucket(bucketInits)
	if b == nil {
		return true, nil
	}
	k := initKey(c.TopCache)
	id, n := decodeInit(b.Get(k))
	switch {
	case id != c.Init:
		return true, nil // not recorded: nobody else uses it
	case n <= 1:
		return true, b.Delete(k)
	}
	return false, b.Put(k, encodeInit(id, n-1))
}

// recordedInit reports whether id is the recorded init layer of an image.
func recordedInit(tx *bolt.Tx, id string) bool {
	b := tx.Bucket(bucketInits)
	if b == nil {
		return false
	}
	found := false
	b.ForEach(func(_, v []byte) error {
		if got, _ := decodeInit(v); got == id {
			found = true
		}
		return nil
	})
	return found
}

// encodeInit is a user count (8 bytes, big-endian) then the layer id.
func encodeInit(id string, users uint64) []byte {
	return append(binary.BigEndian.AppendUint64(nil, users), id...)
}

func decodeInit(v []byte) (id string, users uint64) {
	if len(v) < 8 {
		return "", 0
	}
	return string(v[8:]), binary.BigEndian.Uint64(v[:8])
}
