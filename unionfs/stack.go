package unionfs

import (
	"errors"
	"os"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Names with a meaning in a branch, as aufs (and the layer tar) spells them.
const (
	whiteoutPrefix = ".wh."
	// OpaqueMarker in a directory hides everything the branches below have
	// in it.
	OpaqueMarker = whiteoutPrefix + whiteoutPrefix + ".opq"
	// workDir at the root of the writable branch holds copy-ups and new
	// directories while they are built; a crash leaves them only there.
	// Like all .wh..wh. names it never shows and never goes into a diff.
	workDir = whiteoutPrefix + whiteoutPrefix + "orph"
)

// IsWhiteout reports whether name, a directory entry of a branch, is one of
// the names aufs keeps for itself (a whiteout, the opaque marker, its
// metadata directories): such names never show in the union.
func IsWhiteout(name string) bool { return strings.HasPrefix(name, whiteoutPrefix) }

// Stack answers what a list of branch directories shows merged, without
// mounting anything: the union file system resolves every name with it,
// and the aufs driver uses it to compute a layer's changes.
type Stack struct {
	// Branches are directories, the top one first.
	Branches []string
}

// entry is what the union shows at one path.
type entry struct {
	branch int // index of the branch holding the visible entry; -1 if none
	st     syscall.Stat_t
	dirs   []int // for a directory: the branches merged at the path, top first
}

func (e *entry) isDir() bool { return e.branch >= 0 && e.st.Mode&unix.S_IFMT == unix.S_IFDIR }

// root returns the entry of the union's root: every branch down to the
// first opaque one.
func (s *Stack) root() (entry, error) {
	e := entry{branch: -1}
	for b, dir := range s.Branches {
		var st syscall.Stat_t
		if err := syscall.Lstat(dir, &st); err != nil {
			return e, &os.PathError{Op: "lstat", Path: dir, Err: err}
		}
		if e.branch < 0 {
			e.branch, e.st = b, st
		}
		e.dirs = append(e.dirs, b)
		if exists(dir + "/" + OpaqueMarker) {
			break
		}
	}
	return e, nil
}

// child resolves rel ("/a/b"), whose parent directory is merged from the
// branches dirs, top first: the first branch holding the name wins, a
// whiteout hides the name from the branches below it, and a directory
// merges with the directories of the same name below it until an opaque
// one.
func (s *Stack) child(dirs []int, rel string) (entry, error) {
	e := entry{branch: -1}
	slash := strings.LastIndexByte(rel, '/')
	whiteout := rel[:slash+1] + whiteoutPrefix + rel[slash+1:]
	for i, b := range dirs {
		p := s.Branches[b] + rel
		var st syscall.Stat_t
		err := syscall.Lstat(p, &st)
		switch {
		case err == nil && e.branch < 0:
			e.branch, e.st = b, st
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return e, nil
			}
			e.dirs = []int{b}
		case err == nil:
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return e, nil // a file below a directory ends the merge
			}
			e.dirs = append(e.dirs, b)
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
			// A whiteout in the last branch has nothing to hide: not
			// looking for one spares new directories, which are in the
			// writable branch alone, a stat per name created in them.
			if i < len(dirs)-1 && exists(s.Branches[b]+whiteout) {
				return e, nil
			}
			continue
		default:
			return e, &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		if exists(p + "/" + OpaqueMarker) {
			return e, nil
		}
	}
	return e, nil
}

// resolve walks rel ("" or "/a/b") from the root.
func (s *Stack) resolve(rel string) (entry, error) {
	e, err := s.root()
	if err != nil || rel == "" {
		return e, err
	}
	end := 0
	for end < len(rel) {
		next := strings.IndexByte(rel[end+1:], '/')
		if next < 0 {
			end = len(rel)
		} else {
			end += 1 + next
		}
		if !e.isDir() {
			return entry{branch: -1}, nil
		}
		if e, err = s.child(e.dirs, rel[:end]); err != nil {
			return e, err
		}
	}
	return e, nil
}

// Lookup returns the path of the entry the union shows at rel ("/a/b"),
// "" when it shows none.
func (s *Stack) Lookup(rel string) (string, error) {
	e, err := s.resolve(rel)
	if err != nil || e.branch < 0 {
		return "", err
	}
	return s.Branches[e.branch] + rel, nil
}

// Names lists the entries the union shows in the directory rel ("" for the
// root), sorted; none when rel is no directory.
func (s *Stack) Names(rel string) ([]string, error) {
	e, err := s.resolve(rel)
	if err != nil || !e.isDir() {
		return nil, err
	}
	list, err := s.list(e.dirs, rel)
	names := make([]string, len(list))
	for i, l := range list {
		names[i] = l.name
	}
	return names, err
}

// listed is one name of a merged directory and the branch it shows from.
type listed struct {
	name   string
	branch int
}

// list merges the directory rel of the branches dirs: a name shows from
// the first branch that has it, unless a branch above that one has its
// whiteout; whiteouts and aufs's own names never show. Sorted by name.
func (s *Stack) list(dirs []int, rel string) ([]listed, error) {
	seen := map[string]bool{}
	var out []listed
	for _, b := range dirs {
		entries, err := os.ReadDir(s.Branches[b] + rel)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var hidden []string
		for _, de := range entries {
			name := de.Name()
			if IsWhiteout(name) {
				if victim := name[len(whiteoutPrefix):]; !IsWhiteout(victim) {
					hidden = append(hidden, victim)
				}
				continue
			}
			if seen[name] {
				continue
			}
			seen[name] = true
			out = append(out, listed{name: name, branch: b})
		}
		for _, h := range hidden {
			seen[h] = true
		}
	}
	slices.SortFunc(out, func(a, b listed) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

func exists(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil
}
