package container

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
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
//
// init/<parent>.lock orders the users of one init layer across processes:
// a Create holds it shared from reading the record to writing its own, so
// the layer cannot go under it; making the layer (the image's first
// container) and removing a container (maybe its last) hold it exclusively.

var bucketInits = []byte("container-inits")

// errInitChanged reports a record that the init lock should have kept from
// changing: a bug, or a store changed by hand.
var errInitChanged = errors.New("the image's init layer changed under its lock")

// lockInit takes the flock of the init layer on parent, how being
// unix.LOCK_SH or LOCK_EX. Recover removes the files of removed layers
// under the lock, so after locking, the file must still be the one at the
// path.
func (s *Store) lockInit(parent string, how int) (*os.File, error) {
	if err := os.MkdirAll(s.initCache, 0o700); err != nil {
		return nil, fmt.Errorf("init layer lock: %w", err)
	}
	p := s.initLockPath(parent)
	for {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("init layer lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), how); err != nil {
			f.Close()
			return nil, fmt.Errorf("init layer lock %s: %w", p, err)
		}
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(p, &named) == nil && held.Ino == named.Ino {
			return f, nil
		}
		f.Close()
	}
}

// removeInitLock removes the lock of an init layer on a removed driver
// layer, unless someone holds it.
func (s *Store) removeInitLock(parent string) {
	f, err := os.Open(s.initLockPath(parent))
	if err != nil {
		return
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		os.Remove(f.Name())
	}
}

func (s *Store) initLockPath(parent string) string {
	return filepath.Join(s.initCache, string(initKey(parent))+lockSuffix)
}

const lockSuffix = ".lock"

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
