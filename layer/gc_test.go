package layer

import (
	"testing"

	bolt "go.etcd.io/bbolt"
)

// txID returns the ID of the last committed transaction: it moves only when
// something was written.
func txID(t *testing.T, s *testStore) int {
	t.Helper()
	var id int
	if err := s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestReleaseCollectsWhatOnlyItHeld checks that the layers a released lease
// alone held go with its record, and their driver layers at the next
// Recover.
func TestReleaseCollectsWhatOnlyItHeld(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		lease := newLease(t, s)
		src := plain(makeTar(t, []entry{file("a", "1")}, 0))
		if _, err := s.RegisterChain(t.Context(), lease, "", []Source{src}); err != nil {
			t.Fatal(err)
		}
		if err := lease.Release(); err != nil {
			t.Fatal(err)
		}
		if layers, err := s.List(); err != nil || len(layers) != 0 {
			t.Errorf("after Release, layers recorded: %v, %v", layers, err)
		}
		if names := readDirNames(t, s.leaseDir()); len(names) != 0 {
			t.Errorf("after Release, lease files left: %v", names)
		}
		if err := s.Recover(); err != nil {
			t.Fatal(err)
		}
		assertEmpty(t, s)
	})
}

// TestRecoverWritesOnlyWhenDue checks that Recover, which every store open
// runs, writes nothing on a clean store and collects once a collection is
// marked due.
func TestRecoverWritesOnlyWhenDue(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		lease := newLease(t, s)
		src := plain(makeTar(t, []entry{file("a", "1")}, 0))
		layers, err := s.RegisterChain(t.Context(), lease, "", []Source{src})
		if err != nil {
			t.Fatal(err)
		}
		s.setRoots(layers[0].ChainID)
		if err := lease.Release(); err != nil {
			t.Fatal(err)
		}
		before := txID(t, s)
		if err := s.Recover(); err != nil {
			t.Fatal(err)
		}
		if after := txID(t, s); after != before {
			t.Errorf("Recover of a clean store wrote %d transactions", after-before)
		}

		// The image goes, by a caller that marks the collection due
		// and dies before collecting.
		s.setRoots()
		if err := s.db.Update(Due); err != nil {
			t.Fatal(err)
		}
		if err := s.Recover(); err != nil {
			t.Fatal(err)
		}
		assertEmpty(t, s)
		before = txID(t, s)
		if err := s.Recover(); err != nil {
			t.Fatal(err)
		}
		if after := txID(t, s); after != before {
			t.Error("the due mark outlived the collection")
		}
	})
}
