package btrfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
)

// ApplyDiff writes the layer tar into id's subvolume. A layer made by
// Create is read-only afterwards; applying to it again lifts the flag for
// the time it takes.
func (d *Driver) ApplyDiff(id, parent string, diff io.Reader) (int64, error) {
	if !d.Exists(id) {
		return 0, fmt.Errorf("apply to layer %s: %w", id, errdefs.ErrNotFound)
	}
	dir := d.dir(id)
	ro, err := readOnly(dir)
	if err == nil && ro {
		err = setReadOnly(dir, false)
	}
	if err != nil {
		return 0, fmt.Errorf("apply to layer %s: %w", id, err)
	}
	n, err := d.Driver.ApplyDiff(id, parent, diff)
	if _, statErr := os.Stat(filepath.Join(d.metaDir(id), committedMarker)); statErr == nil || ro {
		err = errors.Join(err, setReadOnly(dir, true))
	}
	return n, err
}

// DiffSize answers from the qgroup numbers when it can, instead of
// comparing every file with the parent's (containerd #13967): when quota
// is on and consistent, parent is id's own, and id has no children to
// share its extents with, what differs is what only id references. That is
// disk bytes, metadata included, as of a commit this forces first.
func (d *Driver) DiffSize(id, parent string) (int64, error) {
	if n, ok := d.exclusiveBytes(id, parent); ok {
		return n, nil
	}
	return d.Driver.DiffSize(id, parent)
}

func (d *Driver) exclusiveBytes(id, parent string) (int64, bool) {
	if !d.Exists(id) || parent == "" {
		return 0, false
	}
	if p, err := d.lineage.Parent(id); err != nil || p != parent {
		return 0, false
	}
	if children, _ := os.ReadDir(filepath.Join(d.metaDir(id), "children")); len(children) > 0 {
		return 0, false
	}
	var n int64
	var ok bool
	withDir(d.dir(id), func(fd uintptr) error {
		state, err := readQuotaState(fd)
		if err != nil || !state.on || !state.consistent {
			return err
		}
		if err := unix.Syncfs(int(fd)); err != nil { // qgroups are counted at commit
			return err
		}
		subvol, err := subvolumeID(fd)
		if err != nil {
			return err
		}
		_, exclusive, err := qgroupUsage(fd, subvol)
		if err != nil {
			return err
		}
		n, ok = int64(exclusive), true
		return nil
	})
	return n, ok
}
