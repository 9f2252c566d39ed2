package layer

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
)

// A lease is alive exactly while its owner holds an flock on its file: the
// kernel drops the lock when the owner dies, however it dies, so liveness
// needs no heartbeat and no pid that could be reused.

var (
	bucketLeases = []byte("leases")
	keyHeld      = []byte("layers")  // chain IDs the lease holds
	keyPending   = []byte("pending") // cache IDs created, not yet recorded; value: creation sequence
)

// tmpLeasePrefix names a lease file that is being created and not yet
// locked under its final name.
const tmpLeasePrefix = ".tmp-"

// Lease protects the layers registered under it from garbage collection
// until it is released; a lease of a crashed process is dead and its work is
// cleaned up by the next GC.
type Lease struct {
	store *Store
	id    string

	mu   sync.Mutex
	file *os.File // holds the flock; nil once released
}

// NewLease starts a lease.
func (s *Store) NewLease() (*Lease, error) {
	id := randomID()
	f, err := s.lockLeaseFile(id)
	if err != nil {
		return nil, fmt.Errorf("new lease: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		leases, err := tx.CreateBucketIfNotExists(bucketLeases)
		if err != nil {
			return err
		}
		b, err := leases.CreateBucket([]byte(id))
		if err != nil {
			return err
		}
		if _, err := b.CreateBucket(keyHeld); err != nil {
			return err
		}
		_, err = b.CreateBucket(keyPending)
		return err
	})
	if err != nil {
		os.Remove(s.leasePath(id))
		f.Close()
		return nil, fmt.Errorf("new lease: %w", err)
	}
	return &Lease{store: s, id: id, file: f}, nil
}

// lockLeaseFile creates the lease file id and locks it. The file is locked
// under a temporary name and then renamed, because GC removes every lease
// file it manages to lock: under its final name a file is never unlocked
// while its owner lives.
func (s *Store) lockLeaseFile(id string) (*os.File, error) {
	final := s.leasePath(id)
	tmp := filepath.Join(s.leaseDir(), tmpLeasePrefix+id)
	for {
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", tmp, err)
		}
		err = os.Rename(tmp, final)
		if err == nil {
			return f, nil
		}
		f.Close()
		// A GC removed the file between its creation and the lock: try again.
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
}

// Release ends the lease. The layers it held stay while an image or
// another lease holds them; the others are deleted with the lease's record,
// in one transaction, and their driver layers removed at the next GC.
func (l *Lease) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return nil
	}
	err := l.store.db.Update(func(tx *bolt.Tx) error {
		leases := tx.Bucket(bucketLeases)
		if leases == nil || leases.Bucket([]byte(l.id)) == nil {
			return nil
		}
		b := leases.Bucket([]byte(l.id))
		if err := trashPending(tx, b); err != nil {
			return err
		}
		held, _ := b.Bucket(keyHeld).Cursor().First()
		if err := leases.DeleteBucket([]byte(l.id)); err != nil || held == nil {
			return err
		}
		_, err := l.store.Collect(tx)
		return err
	})
	if err != nil {
		return fmt.Errorf("release lease %s: %w", l.id, err)
	}
	// Removed while locked, so that no GC takes it for a dead lease's.
	os.Remove(l.store.leasePath(l.id))
	l.file.Close()
	l.file = nil
	return nil
}

func (s *Store) leaseDir() string { return filepath.Join(s.root, "leases") }

// leasePath is the file of lease id once locked; the open file's Name is
// still its temporary name.
func (s *Store) leasePath(id string) string { return filepath.Join(s.leaseDir(), id) }

// leaseBucket returns the record of lease id in tx.
func leaseBucket(tx *bolt.Tx, id string) (*bolt.Bucket, error) {
	if leases := tx.Bucket(bucketLeases); leases != nil {
		if b := leases.Bucket([]byte(id)); b != nil {
			return b, nil
		}
	}
	return nil, fmt.Errorf("lease %s is released or its owner died: %w", id, errdefs.ErrNotFound)
}

// hold adds chain IDs to the layers lease id holds.
func hold(tx *bolt.Tx, id string, chainIDs ...digest.Digest) error {
	b, err := leaseBucket(tx, id)
	if err != nil {
		return err
	}
	held := b.Bucket(keyHeld)
	for _, c := range chainIDs {
		if err := held.Put([]byte(c), nil); err != nil {
			return err
		}
	}
	return nil
}

// addPending records driver layers that lease id is about to create, so
// that the GC can remove them if the lease's owner dies.
func addPending(tx *bolt.Tx, id string, cacheIDs ...string) error {
	b, err := leaseBucket(tx, id)
	if err != nil {
		return err
	}
	pending := b.Bucket(keyPending)
	for _, c := range cacheIDs {
		seq, err := pending.NextSequence()
		if err != nil {
			return err
		}
		if err := pending.Put([]byte(c), binary.BigEndian.AppendUint64(nil, seq)); err != nil {
			return err
		}
	}
	return nil
}

// dropPending forgets driver layers that are recorded or removed.
func dropPending(tx *bolt.Tx, id string, cacheIDs ...string) error {
	b, err := leaseBucket(tx, id)
	if err != nil {
		return err
	}
	pending := b.Bucket(keyPending)
	for _, c := range cacheIDs {
		if err := pending.Delete([]byte(c)); err != nil {
			return err
		}
	}
	return nil
}

// trashPending moves the pending driver layers of a lease record to the
// trash, newest first so that children go before their parents.
func trashPending(tx *bolt.Tx, lease *bolt.Bucket) error {
	type entry struct {
		cacheID string
		seq     uint64
	}
	var entries []entry
	err := lease.Bucket(keyPending).ForEach(func(k, v []byte) error {
		entries = append(entries, entry{string(k), binary.BigEndian.Uint64(v)})
		return nil
	})
	if err != nil {
		return err
	}
	slices.SortFunc(entries, func(a, b entry) int { return cmp.Compare(b.seq, a.seq) })
	for _, e := range entries {
		if err := addTrash(tx, trashItem{CacheID: e.cacheID}); err != nil {
			return err
		}
	}
	return nil
}

// scanLeases returns the chain IDs live leases hold and whether any lease
// (record or file) is dead. With collect, it also deletes the dead ones'
// records, moving what they created to the trash, and their files; tx must
// then be writable. Without, it changes nothing, so GC can tell in a
// read-only transaction whether it has work.
func (s *Store) scanLeases(tx *bolt.Tx, collect bool) (held []digest.Digest, dead bool, err error) {
	recorded := map[string]bool{}
	if leases := tx.Bucket(bucketLeases); leases != nil {
		var deadKeys [][]byte
		err := leases.ForEachBucket(func(k []byte) error {
			recorded[string(k)] = true
			alive, err := s.leaseAlive(string(k), collect)
			if err != nil {
				return err
			}
			if !alive {
				deadKeys = append(deadKeys, k)
				return nil
			}
			return leases.Bucket(k).Bucket(keyHeld).ForEach(func(c, _ []byte) error {
				held = append(held, digest.Digest(c))
				return nil
			})
		})
		if err != nil {
			return nil, false, err
		}
		dead = len(deadKeys) > 0
		for _, k := range deadKeys {
			if !collect {
				break
			}
			if err := trashPending(tx, leases.Bucket(k)); err != nil {
				return nil, false, err
			}
			if err := leases.DeleteBucket(k); err != nil {
				return nil, false, err
			}
		}
	}

	// Files without a record: a crash between creating the file and
	// recording the lease, or one mid-way through NewLease.
	entries, err := os.ReadDir(s.leaseDir())
	if err != nil {
		return nil, false, fmt.Errorf("lease files: %w", err)
	}
	for _, e := range entries {
		if recorded[e.Name()] {
			continue
		}
		alive, err := s.leaseAlive(e.Name(), collect)
		if err != nil {
			return nil, false, err
		}
		dead = dead || !alive
	}
	return held, dead, nil
}

// leaseAlive reports whether the owner of the lease file name holds its
// lock; a missing file is a dead lease. With remove, the file of a dead
// lease is removed.
func (s *Store) leaseAlive(name string, remove bool) (bool, error) {
	path := filepath.Join(s.leaseDir(), name)
	// A fresh open file description: flock conflicts with the owner's even
	// when the owner is this process.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("lease file: %w", err)
	}
	defer f.Close()
	switch err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); {
	case errors.Is(err, unix.EWOULDBLOCK):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("lock %s: %w", path, err)
	}
	if !remove {
		return false, nil
	}
	// Remove while holding the lock, so nobody can take it over meanwhile.
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("lease file: %w", err)
	}
	return false, nil
}

// randomID returns 32 random bytes in hex, for cache IDs and lease IDs.
func randomID() string {
	var b [32]byte
	rand.Read(b[:]) // never fails: it crashes the program instead
	return hex.EncodeToString(b[:])
}
