package overlay_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/driver/drivertest"
	"github.com/strata-storage/strata/driver/overlay"
	"github.com/strata-storage/strata/errdefs"
)

func newDriver(t *testing.T) driver.Driver {
	t.Helper()
	return newDriverIn(t, t.TempDir())
}

// newDriverIn starts the overlay driver in the store root root.
func newDriverIn(t *testing.T, root string) driver.Driver {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("overlay mounts need root")
	}
	d, err := driver.New(root, "overlay", nil)
	if errors.Is(err, errdefs.ErrNotSupported) {
		t.Skipf("overlay does not work here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, newDriverIn)
}

// TestStack200 mounts a stack whose lower dirs would not fit in one page
// of mount options even as short links.
func TestStack200(t *testing.T) {
	d := newDriver(t)
	defer d.Cleanup()
	parent := ""
	for i := range 200 {
		id := fmt.Sprintf("layer%03d", i)
		if err := d.Create(id, parent, nil); err != nil {
			t.Fatal(err)
		}
		parent = id
	}
	if err := d.CreateReadWrite("top", parent, nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{parent, "top"} {
		root, err := d.Get(id, "")
		if err != nil {
			t.Fatalf("Get(%s) of a 200-layer stack: %v", id, err)
		}
		if _, err := os.ReadDir(root); err != nil {
			t.Error(err)
		}
		if err := d.Put(id); err != nil {
			t.Error(err)
		}
	}
}

func TestMetadata(t *testing.T) {
	d := newDriver(t)
	defer d.Cleanup()
	if err := d.Create("base", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := d.CreateReadWrite("rw", "base", nil); err != nil {
		t.Fatal(err)
	}
	m, err := d.Metadata("rw")
	if err != nil {
		t.Fatal(err)
	}
	base, err := d.Metadata("base")
	if err != nil {
		t.Fatal(err)
	}
	if m["LowerDir"] != base["UpperDir"] {
		t.Errorf("LowerDir of rw = %q, want base's UpperDir %q", m["LowerDir"], base["UpperDir"])
	}
	for _, k := range []string{"UpperDir", "WorkDir"} {
		if _, err := os.Stat(m[k]); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
	// The mount point is made at the first mount.
	if dir, err := d.Get("rw", ""); err != nil || dir != m["MergedDir"] {
		t.Errorf("Get = %q, %v; want MergedDir %q", dir, err, m["MergedDir"])
	} else {
		d.Put("rw")
	}
	if _, ok := base["LowerDir"]; ok {
		t.Error("a base layer has a LowerDir")
	}
}

func TestUnknownOptionRefused(t *testing.T) {
	_, err := overlay.New(filepath.Join(t.TempDir(), "overlay"), map[string]string{"overlay.size": "1G"})
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("unknown option: %v, want ErrInvalid", err)
	}
}

// TestLeftoversRemoved: what a crash mid-Create or mid-Remove leaves is
// gone at the next start, and the layers stay.
func TestLeftoversRemoved(t *testing.T) {
	d := newDriver(t)
	if err := d.Create("base", "", nil); err != nil {
		t.Fatal(err)
	}
	upper, err := d.Metadata("base")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(filepath.Dir(upper["UpperDir"]))
	for _, p := range []string{".tmp-a/diff", ".removing-b/diff"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../a/diff", filepath.Join(root, "l", "DANGLING")); err != nil {
		t.Fatal(err)
	}
	// Another process using the root may own such names: they stay.
	other, err := driver.New(filepath.Dir(root), "overlay", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".tmp-a", ".removing-b", "l/DANGLING"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s removed while another driver uses the root: %v", p, err)
		}
	}
	other.Cleanup()
	d.Cleanup() // the crash: every user of the root is gone
	d, err = driver.New(filepath.Dir(root), "overlay", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".tmp-a", ".removing-b", "l/DANGLING"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived the restart: %v", p, err)
		}
	}
	if _, err := d.Get("base", ""); err != nil {
		t.Errorf("base lost at restart: %v", err)
	}
	d.Put("base")
}
