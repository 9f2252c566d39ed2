package archive

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
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
// when its mode, owner or xattrs differ, or when it holds a change, as
// docker diff reports it; its times are not compared, since they move with
// every entry added or removed. Of a deleted subtree only its top is
// reported.
func Changes(parentDir, dir string) ([]Change, error) {
	return ChangesSince(parentDir, dir, time.Time{})
}

// ChangesSince is Changes for a dir that started as a copy of parentDir at
// time since: a copy has inodes of its own, so any path of dir whose ctime
// is not before since was changed after the copy. That catches a rewrite
// that kept size and mtime, which no comparison of the trees can.
func ChangesSince(parentDir, dir string, since time.Time) ([]Change, error) {
	c := comparer{sem: make(chan struct{}, runtime.GOMAXPROCS(0))}
	if !since.IsZero() {
		c.since = unix.NsecToTimespec(since.UnixNano())
	}
	c.walk(parentDir, dir, "")
	c.wg.Wait()
	if c.err != nil {
		return nil, fmt.Errorf("changes of %s: %w", dir, c.err)
	}
	changes := withParents(c.changes)
	slices.SortFunc(changes, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	return changes, nil
}

// comparer compares two trees, a few directories at a time: a tree of many
// small files costs two lstats per file, which the kernel serves in
// parallel. since is ChangesSince's, zero for none.
type comparer struct {
	since unix.Timespec
	sem   chan struct{} // a slot per directory compared on a goroutine of its own
	wg    sync.WaitGroup

	mu      sync.Mutex
	changes []Change
	err     error
}

// walk compares the directory rel of both trees, on a goroutine of its own
// when a slot is free.
func (c *comparer) walk(parentDir, dir, rel string) {
	select {
	case c.sem <- struct{}{}:
		c.wg.Go(func() {
			defer func() { <-c.sem }()
			c.dirs(parentDir, dir, rel)
		})
	default:
		c.dirs(parentDir, dir, rel)
	}
}

// dirs compares the directory rel ("" or "/a/b") of both trees and walks
// the directories in it; parentDir is "" when the parent tree has no such
// directory.
func (c *comparer) dirs(parentDir, dir, rel string) {
	var changes []Change
	err := c.entries(parentDir, dir, rel, &changes)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.changes = append(c.changes, changes...)
	if err != nil && c.err == nil {
		c.err = err
	}
}

func (c *comparer) failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

// entries compares the entries of the directory rel, adds their changes to
// changes and walks their subdirectories.
func (c *comparer) entries(parentDir, dir, rel string, changes *[]Change) error {
	if c.failed() {
		return nil
	}
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
				c.walk("", dir, p)
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
			c.walk(lower, dir, p)
		}
	}
	for name := range inParent {
		*changes = append(*changes, Change{Path: rel + "/" + name, Kind: ChangeDelete})
	}
	return nil
}

// withParents adds to changes the directories holding a change that are
// not changes themselves, as modified, as docker diff reports them: such a
// directory's entry carries the permissions to restore.
func withParents(changes []Change) []Change {
	listed := make(map[string]bool, len(changes))
	for _, ch := range changes {
		listed[ch.Path] = true
	}
	for _, ch := range changes {
		for dir := path.Dir(ch.Path); dir != "/" && !listed[dir]; dir = path.Dir(dir) {
			listed[dir] = true
			changes = append(changes, Change{Path: dir, Kind: ChangeModify})
		}
	}
	return changes
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
func (c *comparer) sameFile(oldPath, newPath string, old, st *unix.Stat_t) (bool, error) {
	if old.Mode != st.Mode || old.Uid != st.Uid || old.Gid != st.Gid || old.Rdev != st.Rdev {
		return false, nil
	}
	// The parent's inode in a snapshot (btrfs, thin devices), untouched
	// since: every change of content, xattrs or metadata moves the ctime,
	// which no one can set back, so there is nothing more to compare.
	untouched := old.Ino == st.Ino && old.Ctim == st.Ctim
	if isDir(st) {
		// Adding or removing an entry moves a directory's times; that shows
		// as the change of the entry, and of the directory as its parent.
		if untouched {
			return true, nil
		}
		return SameXattrs(oldPath, newPath)
	}
	if old.Mtim != st.Mtim {
		return false, nil
	}
	if untouched && old.Size == st.Size {
		return true, nil
	}
	snapshotTouched := old.Ino == st.Ino && old.Ctim != st.Ctim              // the parent's inode, changed since
	copyTouched := c.since != (unix.Timespec{}) && !before(st.Ctim, c.since) // changed since the copy
	if (snapshotTouched || copyTouched) && st.Mode&unix.S_IFMT == unix.S_IFREG {
		// Touched, but maybe only linked or chmodded back: what counts
		// is the content.
		if same, err := SameContent(oldPath, newPath); err != nil || !same {
			return false, err
		}
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
	return SameXattrs(oldPath, newPath)
}

// SameXattrs reports whether both files carry the same xattrs, as far as a
// layer keeps them (overlay's own are not image content).
func SameXattrs(oldPath, newPath string) (bool, error) {
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

// ChangesSize returns the bytes that changes add or modify in dir as Docker
// counts a layer's size: the lstat size of every entry but directories
// (regular files and symlinks; devices and fifos are 0), each inode once.
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
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
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

// DirSize returns the bytes of the tree at dir as Docker counts a layer's
// size: the lstat size of every entry but directories, each inode once.
// Entries for which skip (if not nil) is true are left out, a directory
// with all it holds.
func DirSize(dir string, skip func(p string, e fs.DirEntry) bool) (int64, error) {
	var size int64
	seen := make(map[uint64]bool)
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if skip != nil && skip(p, e) {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if e.IsDir() {
			return nil
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

// fileID identifies an inode, to recognise hard links.
type fileID struct{ dev, ino uint64 }

// SameEntry reports whether the entry at b is the one at a unchanged: type,
// mode, owner, device, xattrs and, for a non-directory, mtime, size, link
// target and content. Content is read only when all else is equal, which is
// rare: a union's copy-up for a hard link or a chmod back. Union drivers
// use it to tell a copy-up that changed nothing from a change.
func SameEntry(a, b string) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Lstat(a, &sa); err != nil {
		return false, os.NewSyscallError("lstat", err)
	}
	if err := unix.Lstat(b, &sb); err != nil {
		return false, os.NewSyscallError("lstat", err)
	}
	if sa.Mode != sb.Mode || sa.Uid != sb.Uid || sa.Gid != sb.Gid || sa.Rdev != sb.Rdev {
		return false, nil
	}
	if sa.Mode&unix.S_IFMT != unix.S_IFDIR && (sa.Mtim != sb.Mtim || sa.Size != sb.Size) {
		return false, nil
	}
	if same, err := SameXattrs(a, b); err != nil || !same {
		return false, err
	}
	switch sa.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		la, err := os.Readlink(a)
		if err != nil {
			return false, err
		}
		lb, err := os.Readlink(b)
		return la == lb, err
	case unix.S_IFREG:
		return SameContent(a, b)
	}
	return true, nil
}

// SameContent compares two files of equal size byte for byte.
func SameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	bufA, bufB := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, errA := io.ReadFull(fa, bufA)
		nb, errB := io.ReadFull(fb, bufB)
		if na != nb || !bytes.Equal(bufA[:na], bufB[:nb]) {
			return false, nil
		}
		if errA == io.EOF || errA == io.ErrUnexpectedEOF {
			return errB == io.EOF || errB == io.ErrUnexpectedEOF, nil
		}
		if errA != nil {
			return false, errA
		}
		if errB != nil {
			return false, errB
		}
	}
}
