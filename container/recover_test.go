package container

import (
	"archive/tar"
	"bytes"
	"cmp"
	"errors"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/driver"
	_ "github.com/strata-storage/strata/driver/overlay"
	_ "github.com/strata-storage/strata/driver/vfs"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/metadata"
)

// newTestStore opens a container store on driver name in a fresh root, with
// a base layer "base" to create containers on.
func newTestStore(t *testing.T, name string) *Store {
	t.Helper()
	root := t.TempDir()
	db, err := metadata.Open(filepath.Join(root, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := driver.New(root, name, nil)
	if errors.Is(err, errdefs.ErrNotSupported) {
		t.Skipf("driver %s: %v", name, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Cleanup() })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "hello", Mode: 0o644})
	tw.Close()
	if err := d.Create("base", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ApplyDiff("base", "", &buf); err != nil {
		t.Fatal(err)
	}
	return NewStore(db, d)
}

// TestCrashMidCreateCleaned checks that what a Create or a Remove left when
// its process died goes at the next Recover, and that a Create under way in
// a live process is left alone.
func TestCrashMidCreateCleaned(t *testing.T) {
	for _, name := range []string{"vfs", "overlay"} {
		t.Run(name, func(t *testing.T) {
			s := newTestStore(t, name)
			exist := func(c Container, want bool) {
				t.Helper()
				for _, id := range []string{c.ID, c.InitID()} {
					if s.driver.Exists(id) != want {
						t.Errorf("driver layer %s exists: %v, want %v", id, !want, want)
					}
				}
			}
			startCreate := func() (Container, *createOp) {
				c := Container{ID: newID(), TopCache: "base", Init: newInitID("base")}
				op, err := s.beginCreate(c.ID)
				if err != nil {
					t.Fatal(err)
				}
				if err := op.note(c.Init); err != nil {
					t.Fatal(err)
				}
				if err := s.createLayers(c, true, nil); err != nil {
					t.Fatal(err)
				}
				return c, op
			}

			crashed, op := startCreate()
			op.f.Close() // the process dies: the kernel drops its lock
			live, liveOp := startCreate()

			removed, err := s.Create(Container{TopCache: "base"}, CreateOptions{Name: "removed"})
			if err != nil {
				t.Fatal(err)
			}
			// Remove's transaction, then a crash before the layers went.
			err = s.db.Update(func(tx *bolt.Tx) error {
				if err := tx.Bucket(bucketContainers).Delete([]byte(removed.ID)); err != nil {
					return err
				}
				if last, err := releaseInit(tx, removed); err != nil || !last {
					return cmp.Or(err, errors.New("the only container of its init layer is not its last"))
				}
				return addTrash(tx, removed.ID, removed.InitID())
			})
			if err != nil {
				t.Fatal(err)
			}
			exist(removed, true)

			// The next process opens the store.
			next := NewStore(s.db, s.driver)
			if err := next.Recover(); err != nil {
				t.Fatal(err)
			}
			exist(crashed, false)
			exist(removed, false)
			exist(live, true)
			if _, err := os.Stat(filepath.Join(s.creating, crashed.ID)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the crashed create's file is left: %v", err)
			}

			// The live create finishes and survives later recoveries.
			err = s.db.Update(func(tx *bolt.Tx) error {
				if err := useInit(tx, live, true); err != nil {
					return err
				}
				return s.record(tx, &live)
			})
			if err != nil {
				t.Fatal(err)
			}
			liveOp.done()
			if err := next.Recover(); err != nil {
				t.Fatal(err)
			}
			exist(live, true)
			if _, err := next.Get(live.ID); err != nil {
				t.Error(err)
			}
			if entries, _ := os.ReadDir(s.creating); len(entries) != 0 {
				t.Errorf("files left in %s: %v", s.creating, entries)
			}
		})
	}
}
