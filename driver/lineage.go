package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/strata-storage/strata/errdefs"
)

// Lineage keeps the parent links of a driver's layers on disk so that a
// layer with children is never removed: Dir(id)/parent holds the parent id
// and Dir(parent)/children/<id> is an empty marker, so the check is one
// directory read. Markers are written before a child becomes visible and
// removed after it is gone: a crash leaves at worst a marker naming a layer
// that does not exist, which CheckRemovable drops.
//
// Callers serialize Create and Remove; Lineage itself holds no lock.
type Lineage struct {
	// Dir returns the directory holding id's parent file and children markers.
	Dir func(id string) string
	// Exists reports whether layer id is complete and visible.
	Exists func(id string) bool
}

// Adopt marks child as built on parent. Call it before child is visible.
func (l Lineage) Adopt(parent, child string) error {
	dir := filepath.Join(l.Dir(parent), "children")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, child), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close() // made durable with the child (SyncFS, or the driver's own flush or commit)
}

// Disown drops the marker of child under parent. Call it once child is gone.
func (l Lineage) Disown(parent, child string) error {
	err := os.Remove(filepath.Join(l.Dir(parent), "children", child))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// WriteParent records parent in dir, the staging directory of a new layer
// whose Dir will be dir once it is renamed into place.
func WriteParent(dir, parent string) error {
	if parent == "" {
		return nil
	}
	return os.WriteFile(filepath.Join(dir, "parent"), []byte(parent), 0o600)
}

// Parent returns the parent of id, "" for a base layer.
func (l Lineage) Parent(id string) (string, error) {
	b, err := os.ReadFile(filepath.Join(l.Dir(id), "parent"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// CheckRemovable fails with errdefs.ErrInUse while a child of id exists.
func (l Lineage) CheckRemovable(id string) error {
	dir := filepath.Join(l.Dir(id), "children")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if l.Exists(e.Name()) {
			return fmt.Errorf("layer %s has children: %w", id, errdefs.ErrInUse)
		}
		// Left by a crash between Adopt and the child's creation.
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// SyncWriteFile writes data to a new file and flushes it to disk. It is for
// files inside a staging directory that is renamed into place afterwards.
func SyncWriteFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ValidID fails with errdefs.ErrInvalid for ids that cannot name a directory
// entry or that collide with a driver's hidden staging names.
func ValidID(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\x00") || strings.HasPrefix(id, ".") {
		return fmt.Errorf("invalid layer id %q: %w", id, errdefs.ErrInvalid)
	}
	return nil
}
