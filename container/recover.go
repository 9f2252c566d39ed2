package container

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
)

// Driver layers without a record come from two places, and Recover removes
// both kinds: a Create whose process died before recording the container
// (its flocked file in containers/creating is then free), and a Remove that
// dropped the record but died before deleting the layers (they wait in the
// trash bucket). A layer is never deleted while a live process may still
// record it, nor recorded after its deletion started.

var bucketTrash = []byte("container-trash")

// createOp is a Create under way: it holds the flock on creating/<id>.
type createOp struct{ f *os.File }

// beginCreate creates and locks creating/<id>. A Recover removes the files
// it can lock, so after locking, the file must still be the one at the path.
func (s *Store) beginCreate(id string) (*createOp, error) {
	if err := os.MkdirAll(s.creating, 0o700); err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	p := filepath.Join(s.creating, id)
	for {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create container: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("create container: lock %s: %w", p, err)
		}
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(p, &named) == nil && held.Ino == named.Ino {
			return &createOp{f}, nil
		}
		f.Close()
	}
}

// note writes the id of the init layer the Create is about to make into
// its file, so that Recover can remove the layer should this process die.
func (op *createOp) note(initID string) error {
	if _, err := op.f.WriteString(initID); err != nil {
		return fmt.Errorf("create container: %w", err)
	}
	return nil
}

// done ends a Create whose container is recorded.
func (op *createOp) done() {
	os.Remove(op.f.Name())
	op.f.Close()
}

// abort removes what a failed Create made: its read-write layer, and its
// init layer unless that is recorded for the image's other containers: one
// it made is not, and one that stopped being recorded meanwhile lost its
// last container (it is in the trash, and goes now that this child of it is
// gone). Should a removal
// fail, the file stays (unlocked) for Recover to try again.
func (op *createOp) abort(s *Store, c Container) {
	ids := []string{c.ID}
	recorded := true
	if c.Init != "" {
		s.db.View(func(tx *bolt.Tx) error {
			recorded = recordedInit(tx, c.Init)
			return nil
		})
	}
	if !recorded {
		ids = append(ids, c.Init)
	}
	if removeLayers(s.driver, ids...) == nil {
		os.Remove(op.f.Name())
	}
	op.f.Close()
}

// removeLayers removes driver layers, children first, that may not exist.
func removeLayers(d driver.Driver, ids ...string) error {
	for _, id := range ids {
		if err := d.Remove(id); err != nil && d.Exists(id) {
			return err
		}
	}
	return nil
}

// addTrash queues driver layers for removal, in the order given.
func addTrash(tx *bolt.Tx, ids ...string) error {
	b, err := tx.CreateBucketIfNotExists(bucketTrash)
	if err != nil {
		return err
	}
	for _, id := range ids {
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		if err := b.Put(binary.BigEndian.AppendUint64(nil, seq), []byte(id)); err != nil {
			return err
		}
	}
	return nil
}

// forgetRemoved drops the trash entries whose driver layer is gone. The
// transactions that write container records call it, so that a Remove needs
// no second transaction after deleting its layers: what it queued is
// forgotten by the next Create or Remove.
func (s *Store) forgetRemoved(tx *bolt.Tx) error {
	b := tx.Bucket(bucketTrash)
	if b == nil {
		return nil
	}
	var gone [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if !s.driver.Exists(string(v)) {
			gone = append(gone, slices.Clone(k))
		}
		return nil
	})
	for _, k := range gone {
		if err == nil {
			err = b.Delete(k)
		}
	}
	return err
}

// sweep removes the driver layers in the trash that still exist and
// forgets them; entries whose layer is already gone are left to
// forgetRemoved, so that a sweep with nothing to remove writes nothing. One
// still in use stays for a later sweep.
func (s *Store) sweep() error {
	type entry struct{ key, id []byte }
	var entries []entry
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTrash)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if s.driver.Exists(string(v)) {
				entries = append(entries, entry{slices.Clone(k), slices.Clone(v)})
			}
			return nil
		})
	})
	if err != nil || len(entries) == 0 {
		return err
	}
	var errs []error
	var removed [][]byte
	for _, e := range entries {
		err := removeLayers(s.driver, string(e.id))
		if err == nil {
			removed = append(removed, e.key)
		} else if !errors.Is(err, errdefs.ErrInUse) {
			errs = append(errs, fmt.Errorf("remove driver layer %s: %w", e.id, err))
		}
	}
	if len(removed) > 0 {
		errs = append(errs, s.db.Update(func(tx *bolt.Tx) error {
			for _, k := range removed {
				if err := tx.Bucket(bucketTrash).Delete(k); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	return errors.Join(errs...)
}

// Recover removes the layers of Creates whose process died, finishes the
// removals that crashed and drops the init tars of removed images:
// store.Open runs it, so it writes nothing when there is nothing to clean.
func (s *Store) Recover() error {
	entries, err := os.ReadDir(s.creating)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("recover containers: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if err := s.recoverCreate(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(append(errs, s.sweep(), s.pruneInitCache())...)
}

// recoverCreate removes the layers of the Create of id unless its process
// is alive or it recorded the container.
func (s *Store) recoverCreate(id string) error {
	p := filepath.Join(s.creating, id)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("recover container %s: %w", id, err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		return nil
	} else if err != nil {
		return fmt.Errorf("recover container %s: lock: %w", id, err)
	}
	initID, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("recover container %s: %w", id, err)
	}
	recorded, initRecorded := false, false
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketContainers)
		recorded = b != nil && b.Get([]byte(id)) != nil
		initRecorded = recordedInit(tx, string(initID))
		return nil
	})
	if err == nil && !recorded {
		ids := []string{id}
		if len(initID) > 0 && !initRecorded {
			ids = append(ids, string(initID))
		}
		err = removeLayers(s.driver, ids...)
		if errors.Is(err, errdefs.ErrInUse) {
			return nil // a later Recover tries again: the file stays
		}
	}
	if err != nil {
		return fmt.Errorf("recover container %s: %w", id, err)
	}
	// Removed while locked, so that no Create can take it over meanwhile.
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("recover container %s: %w", id, err)
	}
	return nil
}
