package store

import (
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/container"
)

// txID returns the ID of the last committed transaction: it moves only when
// something was written.
func txID(t *testing.T, s *Store) int {
	t.Helper()
	var id int
	if err := s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestOpenWritesNothing checks that opening a store that needs no clean-up
// writes nothing, as every command opens it: not after a create, nor after
// a remove whose trash entries are left for the next write.
func TestOpenWritesNothing(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root)
	addImage(t, s, []string{"a", "b"}, "app")
	if _, err := s.CreateContainer("app", container.CreateOptions{Name: "kept"}); err != nil {
		t.Fatal(err)
	}
	gone, err := s.CreateContainer("app", container.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveContainer(gone, false); err != nil {
		t.Fatal(err)
	}
	before := txID(t, s)
	s.Close()

	again := openStore(t, root)
	if after := txID(t, again); after != before {
		t.Errorf("Open wrote %d transactions", after-before)
	}
	if _, err := again.Containers().Get("kept"); err != nil {
		t.Error(err)
	}
	if again.Driver().Exists(gone.ID) {
		t.Errorf("driver layer %s of the removed container is left", gone.ID)
	}
	if !again.Driver().Exists(gone.InitID()) {
		t.Errorf("init layer %s went with a container while another uses it", gone.InitID())
	}
}

// TestRemoveContainerOfRemovedImage checks that the last container of an
// image removed with force takes the image's layers with it.
func TestRemoveContainerOfRemovedImage(t *testing.T) {
	s := openStore(t, t.TempDir())
	addImage(t, s, []string{"a", "b"}, "app")
	c, err := s.CreateContainer("app", container.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RemoveImage("app", RemoveImageOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if layers, _ := s.Layers().List(); len(layers) != 2 {
		t.Fatalf("%d layers after rmi -f, want the container's 2", len(layers))
	}
	if err := s.RemoveContainer(c, false); err != nil {
		t.Fatal(err)
	}
	if layers, _ := s.Layers().List(); len(layers) != 0 {
		t.Errorf("layers left after the last container went: %v", layers)
	}
	before := txID(t, s)
	if err := s.recover(); err != nil {
		t.Fatal(err)
	}
	if after := txID(t, s); after != before {
		t.Error("the collection was left due")
	}
}
