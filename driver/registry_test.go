package driver_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
)

// fake is a driver name registered by this test whose init fails with
// what initErr holds at the time.
type fake struct {
	driver.Driver
	root string
}

var initErr = map[string]error{}

func init() {
	// Not the real drivers: this package's tests import neither.
	for _, name := range []string{"overlay", "btrfs", "vfs", "zz-extra"} {
		driver.Register(name, func(root string, options map[string]string) (driver.Driver, error) {
			if err := driver.CheckOptions(name, options, "known"); err != nil {
				return nil, err
			}
			if err := initErr[name]; err != nil {
				return nil, err
			}
			return fake{root: root}, nil
		})
	}
}

func setInitErrs(t *testing.T, errs map[string]error) {
	t.Cleanup(func() { initErr = map[string]error{} })
	initErr = errs
}

func rootOf(t *testing.T, d driver.Driver, err error) string {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Base(d.(fake).root)
}

func TestNewByName(t *testing.T) {
	root := t.TempDir()
	d, err := driver.New(root, "vfs", map[string]string{"known": "1"})
	if got := rootOf(t, d, err); got != "vfs" {
		t.Errorf("driver root %s, want <root>/vfs", got)
	}
	if _, err := driver.New(root, "zfs", nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("unknown driver: %v, want ErrNotFound", err)
	}
	_, err = driver.New(root, "vfs", map[string]string{"size": "1G"})
	if !errors.Is(err, errdefs.ErrInvalid) || !contains(err.Error(), `"size"`) {
		t.Errorf("unknown option: %v, want ErrInvalid naming the key", err)
	}
}

func TestAutomaticChoiceByPriority(t *testing.T) {
	d, err := driver.New(t.TempDir(), "", nil)
	if got := rootOf(t, d, err); got != "overlay" {
		t.Errorf("chose %s, want overlay", got)
	}
	setInitErrs(t, map[string]error{"overlay": errdefs.ErrNotSupported})
	d, err = driver.New(t.TempDir(), "", nil)
	if got := rootOf(t, d, err); got != "btrfs" {
		t.Errorf("chose %s, want btrfs when overlay is not supported", got)
	}
	setInitErrs(t, map[string]error{
		"overlay": errdefs.ErrNotSupported,
		"btrfs":   errdefs.ErrNotSupported,
	})
	d, err = driver.New(t.TempDir(), "", nil)
	if got := rootOf(t, d, err); got != "vfs" {
		t.Errorf("chose %s, want vfs when overlay and btrfs are not supported", got)
	}
	setInitErrs(t, map[string]error{"overlay": errors.New("disk on fire")})
	if _, err := driver.New(t.TempDir(), "", nil); err == nil || !contains(err.Error(), "disk on fire") {
		t.Errorf("a failure other than not-supported must stop the choice: %v", err)
	}
}

func TestAutomaticChoiceByState(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "overlay"), 0o700); err != nil { // empty: no state
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "zz-extra", "layer"), 0o700); err != nil {
		t.Fatal(err)
	}
	d, err := driver.New(root, "", nil)
	if got := rootOf(t, d, err); got != "zz-extra" {
		t.Errorf("chose %s, want zz-extra, the one with state", got)
	}
	if err := os.MkdirAll(filepath.Join(root, "vfs", "dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err = driver.New(root, "", nil)
	if !errors.Is(err, errdefs.ErrInvalid) || !contains(err.Error(), "--storage-driver") {
		t.Errorf("two drivers with state: %v, want ErrInvalid telling to pick one", err)
	}
}

func TestParseOptions(t *testing.T) {
	m, err := driver.ParseOptions([]string{"Overlay.Size=10G", " a = b=c "})
	if err != nil {
		t.Fatal(err)
	}
	if m["overlay.size"] != "10G" || m["a"] != "b=c" || len(m) != 2 {
		t.Errorf("got %v", m)
	}
	for _, bad := range [][]string{{"novalue"}, {"=x"}, {"a=1", "A=2"}} {
		if _, err := driver.ParseOptions(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ParseOptions(%q): %v, want ErrInvalid", bad, err)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
