package overlay

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/strata-storage/strata/archive"
	"golang.org/x/sys/unix"
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

// Diff writes the diff dir as a layer tar, translating whiteouts.
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

// DiffSize counts the bytes of regular files in the diff dir, each inode
// once, as ApplyDiff counted them.
func (d *Driver) DiffSize(id, parent string) (int64, error) {
	l, ok, err := d.native(id, parent)
	if err != nil {
		return 0, err
	}
	if !ok {
		return d.naive.DiffSize(id, parent)
	}
	var size int64
	seen := map[uint64]bool{}
	err = filepath.WalkDir(l.diff, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Nlink > 1 {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		size += fi.Size()
		return nil
	})
	return size, err
}

// Changes walks the diff dir only: a whiteout is a deletion, an entry the
// parents do not have an addition, anything else a modification. Only an
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
	u := &union{lowers: lowers, dirs: map[string][]string{}}
	var changes []archive.Change
	err := filepath.WalkDir(upper, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == upper {
			return nil
		}
		rel := "/" + filepath.ToSlash(strings.TrimPrefix(p, upper+"/"))
		if e.Type()&fs.ModeCharDevice != 0 && isWhiteout(p) {
			changes = append(changes, archive.Change{Path: rel, Kind: archive.ChangeDelete})
			return nil
		}
		inParent, err := u.exists(rel)
		if err != nil {
			return err
		}
		kind := archive.ChangeAdd
		if inParent {
			kind = archive.ChangeModify
		}
		changes = append(changes, archive.Change{Path: rel, Kind: kind})
		if !e.IsDir() || !inParent || !isOpaque(p) {
			return nil
		}
		hidden, err := u.names(rel)
		if err != nil {
			return err
		}
		for _, name := range hidden {
			if _, err := os.Lstat(filepath.Join(p, name)); errors.Is(err, fs.ErrNotExist) {
				changes = append(changes, archive.Change{Path: path.Join(rel, name), Kind: archive.ChangeDelete})
			} else if err != nil {
				return err
			}
		}
		return nil
	})
	slices.SortFunc(changes, func(a, b archive.Change) int { return strings.Compare(a.Path, b.Path) })
	return changes, err
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

// exists reports whether the union has an entry at rel.
func (u *union) exists(rel string) (bool, error) {
	parents, err := u.dirsAt(path.Dir(rel))
	if err != nil {
		return false, err
	}
	for _, parent := range parents {
		p := filepath.Join(parent, path.Base(rel))
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		return !(fi.Mode()&fs.ModeCharDevice != 0 && isWhiteout(p)), nil
	}
	return false, nil
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
