package archive

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Changes compares the tree at dir with the tree at parentDir ("" = empty)
// and returns the differences sorted by path.
//
// A path is modified when its type, mode, owner, size (regular files),
// nanosecond mtime, symlink target, device number or xattrs differ: copies
// of a tree keep all of these, while content changes move the mtime even
// within one second. A file that is the parent's own inode (a snapshot of
// it, as btrfs and thin devices make) is modified when its ctime moved,
// which catches a rewrite that kept size and mtime. A directory is modified
// by its own metadata only (but adding or removing a child moves its
// mtime). Of a deleted subtree only its top is reported.
func Changes(parentDir, dir string) ([]Change, error) {
	return ChangesSince(parentDir, dir, time.Time{})
}

// ChangesSince is Changes for a dir that started as a copy of parentDir at
// time since: a copy has inodes of its own, so any path of dir whose ctime
// is not before since was changed after the copy. That catches a rewrite
// that kept size and mtime, which no comparison of the trees can.
func ChangesSince(parentDir, dir string, since time.Time) ([]Change, error) {
	var changes []Change
	var cmp comparer
	if !since.IsZero() {
		cmp.since = unix.NsecToTimespec(since.UnixNano())
	}
	if err := cmp.dirs(parentDir, dir, "", &changes); err != nil {
		return nil, fmt.Errorf("changes of %s: %w", dir, err)
	}
	slices.SortFunc(changes, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	return changes, nil
}

// comparer compares two trees; since is ChangesSince's, zero for none.
type comparer struct{ since unix.Timespec }

// dirs compares the directory rel ("" or "/a/b") of both trees;
// parentDir is "" when the parent tree has no such directory.
func (c comparer) dirs(parentDir, dir, rel string, changes *[]Change) error {
	names, err := readNames(dir + rel)
	if err != nil {
		return err
	}
	var parentNames []string
	if parentDir != "" {
		if parentNames, err = readNames(parentDir + rel); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	inParent := make(map[string]bool, len(parentNames))
	for _, name := range parentNames {
		inParent[name] = true
	}
	for _, name := range names {
		p := rel + "/" + name
		var st unix.Stat_t
		if err := unix.Lstat(dir+p, &st); err != nil {
			return os.NewSyscallError("lstat "+dir+p, err)
		}
		if !inParent[name] {
			*changes = append(*changes, Change{Path: p, Kind: ChangeAdd})
			if isDir(&st) {
				if err := c.dirs("", dir, p, changes); err != nil {
					return err
				}
			}
			continue
		}
		delete(inParent, name)
		var old unix.Stat_t
		if err := unix.Lstat(parentDir+p, &old); err != nil {
			return os.NewSyscallError("lstat "+parentDir+p, err)
		}
		same, err := c.sameFile(parentDir+p, dir+p, &old, &st)
		if err != nil {
			return err
		}
		if !same {
			*changes = append(*changes, Change{Path: p, Kind: ChangeModify})
		}
		if isDir(&st) {
			// A directory that replaced a file has only new children.
			lower := parentDir
			if !isDir(&old) {
				lower = ""
			}
			if err := c.dirs(lower, dir, p, changes); err != nil {
				return err
			}
		}
	}
	for name := range inParent {
		*changes = append(*changes, Change{Path: rel + "/" + name, Kind: ChangeDelete})
	}
	return nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

func before(a, b unix.Timespec) bool {
	return a.Sec < b.Sec || a.Sec == b.Sec && a.Nsec < b.Nsec
}

func isDir(st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFDIR }

// sameFile reports whether the file at newPath has the metadata of the one
// at oldPath, as Changes defines it.
func (c comparer) sameFile(oldPath, newPath string, old, st *unix.Stat_t) (bool, error) {
	if old.Mode != st.Mode || old.Uid != st.Uid || old.Gid != st.Gid ||
		old.Mtim != st.Mtim || old.Rdev != st.Rdev {
		return false, nil
	}
	if old.Ino == st.Ino && old.Ctim != st.Ctim {
		return false, nil // the parent's inode, changed since the snapshot
	}
	if c.since != (unix.Timespec{}) && !before(st.Ctim, c.since) {
		return false, nil // changed since the copy
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if old.Size != st.Size {
			return false, nil
		}
	case unix.S_IFLNK:
		oldTarget, err := os.Readlink(oldPath)
		if err != nil {
			return false, err
		}
		target, err := os.Readlink(newPath)
		if err != nil || target != oldTarget {
			return false, err
		}
	}
	oldXattrs, err := imageXattrs(oldPath)
	if err != nil {
		return false, err
	}
	xattrs, err := imageXattrs(newPath)
	if err != nil {
		return false, err
	}
	return maps.Equal(oldXattrs, xattrs), nil
}

// imageXattrs returns the xattrs of the file at full that belong in a layer.
func imageXattrs(full string) (map[string]string, error) {
	xattrs, err := listXattrs(full)
	maps.DeleteFunc(xattrs, func(name, _ string) bool { return strings.HasPrefix(name, overlayXattrPrefix) })
	return xattrs, err
}

// ChangesSize returns the bytes of the regular files that changes add or
// modify in dir, counting a file with several hard-linked names once.
func ChangesSize(dir string, changes []Change) (int64, error) {
	var size int64
	seen := make(map[fileID]bool)
	for _, c := range changes {
		if c.Kind == ChangeDelete {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(dir+c.Path, &st); err != nil {
			return 0, fmt.Errorf("size of changes: %w", os.NewSyscallError("lstat "+c.Path, err))
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		if st.Nlink > 1 {
			id := fileID{st.Dev, st.Ino}
			if seen[id] {
				continue
			}
			seen[id] = true
		}
		size += st.Size
	}
	return size, nil
}

// fileID identifies an inode, to recognise hard links.
type fileID struct{ dev, ino uint64 }
