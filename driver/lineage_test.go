package driver_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
)

func TestLineage(t *testing.T) {
	root := t.TempDir()
	l := driver.Lineage{
		Dir: func(id string) string { return filepath.Join(root, id) },
		Exists: func(id string) bool {
			_, err := os.Stat(filepath.Join(root, id))
			return err == nil
		},
	}
	if err := os.Mkdir(filepath.Join(root, "base"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := l.Adopt("base", "child"); err != nil {
		t.Fatal(err)
	}
	// A crash between Adopt and the child's creation: the marker is stale.
	if err := l.CheckRemovable("base"); err != nil {
		t.Errorf("stale marker: %v, want removable", err)
	}
	if err := l.Adopt("base", "child"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "child"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := driver.WriteParent(filepath.Join(root, "child"), "base"); err != nil {
		t.Fatal(err)
	}
	if p, err := l.Parent("child"); err != nil || p != "base" {
		t.Errorf("Parent(child) = %q, %v", p, err)
	}
	if p, err := l.Parent("base"); err != nil || p != "" {
		t.Errorf("Parent(base) = %q, %v", p, err)
	}
	if err := l.CheckRemovable("base"); !errors.Is(err, errdefs.ErrInUse) {
		t.Errorf("with a child: %v, want ErrInUse", err)
	}
	if err := l.Disown("base", "child"); err != nil {
		t.Fatal(err)
	}
	if err := l.CheckRemovable("base"); err != nil {
		t.Errorf("after Disown: %v", err)
	}
}

func TestValidID(t *testing.T) {
	for _, id := range []string{"", ".", "..", "a/b", ".tmp-x", "a\x00"} {
		if err := driver.ValidID(id); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ValidID(%q) = %v, want ErrInvalid", id, err)
		}
	}
	for _, id := range []string{"abc", "0123abcd-init"} {
		if err := driver.ValidID(id); err != nil {
			t.Errorf("ValidID(%q) = %v", id, err)
		}
	}
}
