package aufs

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/strata-storage/strata/archive"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/unionfs"
)

// native returns the layer when parent is its own parent, so that the diff
// is exactly diff/<id>; any other base falls back to the naive diff.
func (d *Driver) native(id, parent string) (layer, bool, error) {
	l, err := d.load(id)
	if err != nil {
		return layer{}, false, err
	}
	own, err := d.lineage.Parent(id)
	if err != nil {
		return layer{}, false, err
	}
	return l, own == parent, nil
}

// ApplyDiff extracts the layer tar into diff/<id>: its whiteouts are files
// there as in the tar, so entries are written as they come and the parent
// is never read.
func (d *Driver) ApplyDiff(id, parent string, diff io.Reader) (int64, error) {
	l, ok, err := d.native(id, parent)
	if err != nil {
		return 0, err
	}
	if !ok {
		return d.naive.ApplyDiff(id, parent, diff)
	}
	return archive.Apply(l.branches[0], diff, archive.ApplyOptions{Whiteouts: archive.WhiteoutAUFS})
}

// Diff is a tar of diff/<id>, whiteouts as they are; the union's own
// names (.wh..wh.orph and the like) are left out.
func (d *Driver) Diff(id, parent string) (io.ReadCloser, error) {
	l, ok, err := d.native(id, parent)
	if err != nil {
		return nil, err
	}
	if !ok {
		return d.naive.Diff(id, parent)
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(archive.WriteDir(pw, l.branches[0], archive.WriteOptions{Whiteouts: archive.WhiteoutAUFS}))
	}()
	return pr, nil
}

// CopyDiff copies diff/<from> into diff/<id>, writing its tar on the way
// (driver.DiffCopier). Both must be diffs against their own parents.
func (d *Driver) CopyDiff(id, parent, from, fromParent string, w archive.EntryWriter) (int64, error) {
	l, ok, err := d.native(id, parent)
	if err != nil {
		return 0, err
	}
	f, fromOK, err := d.native(from, fromParent)
	if err != nil {
		return 0, err
	}
	if !ok || !fromOK {
		return 0, fmt.Errorf("copy the diff of %s onto %s: not a diff against its own parent: %w", from, id, errdefs.ErrNotSupported)
	}
	opts := archive.WhiteoutAUFS
	return archive.CopyDir(w, f.branches[0], l.branches[0], archive.WriteOptions{Whiteouts: opts}, archive.ApplyOptions{Whiteouts: opts})
}

// DiffSize counts the lstat size of everything but directories in
// diff/<id> (regular files and symlinks), each inode once, as ApplyDiff
// counted them and as Docker counts a layer's size.
func (d *Driver) DiffSize(id, parent string) (int64, error) {
	l, ok, err := d.native(id, parent)
	if err != nil {
		return 0, err
	}
	if !ok {
		return d.naive.DiffSize(id, parent)
	}
	root := l.branches[0]
	// aufs's own files at the top (.wh..wh.plnk, ...) are not content.
	return archive.DirSize(root, func(p string, e fs.DirEntry) bool {
		return filepath.Dir(p) == root && strings.HasPrefix(e.Name(), ".wh..wh.") && e.Name() != unionfs.OpaqueMarker
	})
}

// Changes walks diff/<id> only: a whiteout is a deletion, an entry the
// parents do not show an addition, one they show a modification when it
// differs from theirs (a directory when its metadata differs or it holds a
// change), as docker diff reports them. An opaque directory also reports
// what it hides of the parents.
func (d *Driver) Changes(id, parent string) ([]archive.Change, error) {
	l, ok, err := d.native(id, parent)
	if err != nil {
		return nil, err
	}
	if !ok {
		return d.naive.Changes(id, parent)
	}
	w := &diffWalk{top: l.branches[0], lower: &unionfs.Stack{Branches: l.branches[1:]}}
	if err := w.dir(""); err != nil {
		return nil, err
	}
	slices.SortFunc(w.changes, func(a, b archive.Change) int { return strings.Compare(a.Path, b.Path) })
	return w.changes, nil
}

type diffWalk struct {
	top     string
	lower   *unionfs.Stack
	changes []archive.Change
}

func (w *diffWalk) add(p string, kind archive.ChangeKind) {
	w.changes = append(w.changes, archive.Change{Path: p, Kind: kind})
}

// dir reports the changes under rel ("" for the root, else "/a/b").
func (w *diffWalk) dir(rel string) error {
	entries, err := os.ReadDir(w.top + rel)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if unionfs.IsWhiteout(name) {
			if victim := strings.TrimPrefix(name, ".wh."); !unionfs.IsWhiteout(victim) {
				w.add(rel+"/"+victim, archive.ChangeDelete)
			}
			continue
		}
		p := rel + "/" + name
		full := w.top + p
		lower, err := w.lookup(p)
		if err != nil {
			return err
		}
		if lower == "" {
			w.add(p, archive.ChangeAdd)
			if e.IsDir() {
				if err := w.dir(p); err != nil {
					return err
				}
			}
			continue
		}
		same, err := archive.SameEntry(lower, full)
		if err != nil {
			return err
		}
		if !e.IsDir() {
			if !same {
				w.add(p, archive.ChangeModify)
			}
			continue
		}
		at := len(w.changes)
		if _, err := os.Lstat(full + "/" + unionfs.OpaqueMarker); err == nil {
			if err := w.hidden(p, full); err != nil {
				return err
			}
		}
		if err := w.dir(p); err != nil {
			return err
		}
		if !same || len(w.changes) > at {
			w.add(p, archive.ChangeModify)
		}
	}
	return nil
}

func (w *diffWalk) lookup(p string) (string, error) {
	if len(w.lower.Branches) == 0 {
		return "", nil
	}
	return w.lower.Lookup(p)
}

// hidden reports as deleted what the opaque directory p hides of the
// parents and does not have itself.
func (w *diffWalk) hidden(p, full string) error {
	if len(w.lower.Branches) == 0 {
		return nil
	}
	names, err := w.lower.Names(p)
	if err != nil {
		return err
	}
	for _, name := range names {
		if _, err := os.Lstat(filepath.Join(full, name)); os.IsNotExist(err) {
			w.add(path.Join(p, name), archive.ChangeDelete)
		} else if err != nil {
			return err
		}
	}
	return nil
}
