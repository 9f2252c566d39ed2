package vfs_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/driver/drivertest"
	_ "github.com/strata-storage/strata/driver/vfs"
)

func TestConformance(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the conformance suite chowns and makes device nodes: needs root")
	}
	drivertest.Run(t, func(t *testing.T, root string) driver.Driver {
		d, err := driver.New(root, "vfs", nil)
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// TestLeftoversRemoved: what a crash mid-Create or mid-Remove leaves is
// gone at the next start, and the layers stay.
func TestLeftoversRemoved(t *testing.T) {
	root := t.TempDir()
	d, err := driver.New(root, "vfs", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Create("base", "", nil); err != nil {
		t.Fatal(err)
	}
	vfsRoot := filepath.Join(root, "vfs")
	leftovers := []string{"dir/.tmp-a", "dir/.removing-b", "meta/.tmp-a", "meta/orphan"}
	for _, p := range leftovers {
		if err := os.MkdirAll(filepath.Join(vfsRoot, p, "x"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// Another process using the root may own such names: they stay.
	other, err := driver.New(root, "vfs", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range leftovers {
		if _, err := os.Lstat(filepath.Join(vfsRoot, p)); err != nil {
			t.Errorf("%s removed while another driver uses the root: %v", p, err)
		}
	}
	other.Cleanup()
	d.Cleanup() // the crash: every user of the root is gone
	d, err = driver.New(root, "vfs", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range leftovers {
		if _, err := os.Lstat(filepath.Join(vfsRoot, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived the restart: %v", p, err)
		}
	}
	if !d.Exists("base") {
		t.Error("base lost at restart")
	}
}
