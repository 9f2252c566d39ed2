package overlay

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/archive"
	"github.com/strata-storage/strata/errdefs"
)

const opaqueXattr = "trusted.overlay.opaque"

// native reports whether parent is id's own parent, so that the diff is
// exactly id's diff dir; any other base falls back to the naive diff.
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

// ApplyDiff extracts the layer tar into the diff dir, whiteouts in
// overlay's own format; the parent is never read.
func (d *Driver) ApplyDiff(id, parent string, diff io.Reader) (int64, error) {
	l, ok, err := d.native(id, parent)
	if err != nil {
		return 0, err
	}
	if !ok {
		return d.naive.ApplyDiff(id, parent, diff)
	}
	return archive.Apply(l.diff, diff, archive.ApplyOptions{Whiteouts: archive.WhiteoutOverlay})
}

// Diff writes the diff dir as a layer tar, translating whiteouts. Like
// Docker's, it holds what a copy-up put there unchanged (the target of a new
// hard link), which Changes leaves out: the link stays a link.
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
		pw.CloseWithError(archive.WriteDir(pw, l.diff, archive.WriteOptions{Whiteouts: archive.WhiteoutOverlay}))
	}()
	return pr, nil
}

// DiffSize counts the lstat size of everything but directories in the diff
// dir (regular files and symlinks), each inode once, as ApplyDiff counted
// them and as Docker counts a layer's size.
func (d *Driver) DiffSize(id, parent string) (int64, error) {
	l, ok, err := d.native(id, parent)
	if err != nil {
		return 0, err
	}
	if !ok {
		return d.naive.DiffSize(id, parent)
	}
	return archive.DirSize(l.diff, nil)
}

// Changes walks the diff dir only: a whiteout is a deletion, an entry the
// parents do not have an addition. An entry the parents have is a
// modification when it differs from theirs: a file copied up only to be
// hard-linked, or chmodded back, is not, as docker diff has it; a directory
// is when its mode, owner or xattrs differ or it holds a change. Only an
// opaque directory makes it read the parents' listing, to report what the
// directory hid.
func (d *Driver) Changes(id, parent string) ([]archive.Change, error) {
	l, ok, err := d.native(id, parent)
	if err != nil {
		return nil, err
	}
	if !ok {
		return d.naive.Changes(id, parent)
	}
	return upperChanges(l.diff, l.lowers)
}

func upperChanges(upper string, lowers []string) ([]archive.Change, error) {
	w := &upperWalk{upper: upper, u: &union{lowers: lowers, dirs: map[string][]string{}}}
	if err := w.dir(""); err != nil {
		return nil, err
	}
	slices.SortFunc(w.changes, func(a, b archive.Change) int { return strings.Compare(a.Path, b.Path) })
	return w.changes, nil
}

// upperWalk collects the changes of an upper dir.
type upperWalk struct {
	upper   string
	u       *union
	changes []archive.Change
}

// dir reports the changes under the directory rel ("" for the root, else
// "/a/b") of the upper dir.
func (w *upperWalk) dir(rel string) error {
	entries, err := os.ReadDir(w.upper + rel)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := rel + "/" + e.Name()
		full := w.upper + p
		if e.Type()&fs.ModeCharDevice != 0 && isWhiteout(full) {
			w.add(p, archive.ChangeDelete)
			continue
		}
		lower, err := w.u.lookup(p)
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
		if isOpaque(full) {
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

func (w *upperWalk) add(p string, kind archive.ChangeKind) {
	w.changes = append(w.changes, archive.Change{Path: p, Kind: kind})
}

// hidden reports as deleted what the opaque directory p hides of the
// parents and does not have itself.
func (w *upperWalk) hidden(p, full string) error {
	names, err := w.u.names(p)
	if err != nil {
		return err
	}
	for _, name := range names {
		if _, err := os.Lstat(filepath.Join(full, name)); errors.Is(err, fs.ErrNotExist) {
			w.add(path.Join(p, name), archive.ChangeDelete)
		} else if err != nil {
			return err
		}
	}
	return nil
}

// union answers what the stack of lower dirs (nearest first) shows, as
// the kernel would merge them, without mounting it.
type union struct {
	lowers []string
	dirs   map[string][]string // memo of dirsAt
}

// dirsAt returns the lower directories merged at rel, nearest first;
// none when rel is not a directory of the union.
func (u *union) dirsAt(rel string) ([]string, error) {
	if rel == "/" {
		return u.lowers, nil
	}
	if dirs, ok := u.dirs[rel]; ok {
		return dirs, nil
	}
	parents, err := u.dirsAt(path.Dir(rel))
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, parent := range parents {
		p := filepath.Join(parent, path.Base(rel))
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			break // a whiteout or file hides the rest; on top, rel is no dir
		}
		dirs = append(dirs, p)
		if isOpaque(p) {
			break
		}
	}
	u.dirs[rel] = dirs
	return dirs, nil
}

// lookup returns the path of the lower entry the union shows at rel, ""
// when it shows none.
func (u *union) lookup(rel string) (string, error) {
	parents, err := u.dirsAt(path.Dir(rel))
	if err != nil {
		return "", err
	}
	for _, parent := range parents {
		p := filepath.Join(parent, path.Base(rel))
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeCharDevice != 0 && isWhiteout(p) {
			return "", nil
		}
		return p, nil
	}
	return "", nil
}

// names lists the entries the union shows in directory rel.
func (u *union) names(rel string) ([]string, error) {
	dirs, err := u.dirsAt(rel)
	if err != nil {
		return nil, err
	}
	visible := map[string]bool{}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if _, decided := visible[e.Name()]; decided {
				continue
			}
			visible[e.Name()] = !(e.Type()&fs.ModeCharDevice != 0 && isWhiteout(filepath.Join(dir, e.Name())))
		}
	}
	var names []string
	for name, shown := range visible {
		if shown {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// isWhiteout reports whether p is overlay's whiteout: a 0/0 char device.
func isWhiteout(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

func isOpaque(p string) bool {
	buf := make([]byte, 1)
	n, err := unix.Lgetxattr(p, opaqueXattr, buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// CopyDiff copies the diff dir of from into the diff dir of id, writing its
// tar on the way (driver.DiffCopier). Both must be diffs against their own
// parents.
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
	opts := archive.WhiteoutOverlay
	return archive.CopyDir(w, f.diff, l.diff, archive.WriteOptions{Whiteouts: opts}, archive.ApplyOptions{Whiteouts: opts})
}
