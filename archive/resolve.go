package archive

import (
	"errors"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// maxSymlinks bounds the symlinks followed to resolve one name, as the
// kernel's ELOOP limit does.
const maxSymlinks = 40

// resolveDir returns the real path, relative to the root, of the directory
// that the clean tar name dir denotes. Missing directories are created 0755,
// or, without create, are an error wrapping os.ErrNotExist. Symlinks are followed as they would be in a chroot into the root (an
// absolute target starts at the root); one that climbs above the root is an
// error, so nothing outside the root is ever reached.
func (a *applier) resolveDir(dir string, create bool) (string, error) {
	if p, ok := a.dirs[dir]; ok {
		return p, nil
	}
	parent, err := a.resolveDir(path.Dir(dir), create)
	if err != nil {
		return "", err
	}
	links := 0
	p, err := a.step(parent, path.Base(dir), create, &links)
	if err != nil {
		return "", err
	}
	a.dirs[dir] = p
	return p, nil
}

// step resolves the component name in the real directory dir.
func (a *applier) step(dir, name string, create bool, links *int) (string, error) {
	p := join(dir, name)
	full := a.full(p)
	if a.written[p] == markedFile {
		// A file of this layer, maybe still being written: look at it
		// once it is there.
		if err := a.files.wait(); err != nil {
			return "", err
		}
	}
	var st unix.Stat_t
	err := unix.Lstat(full, &st)
	if errors.Is(err, unix.ENOENT) && create {
		if err := unix.Mkdir(full, 0o755); err != nil {
			return "", os.NewSyscallError("mkdir", err)
		}
		// The umask may have taken bits away.
		if err := unix.Chmod(full, 0o755); err != nil {
			return "", os.NewSyscallError("chmod", err)
		}
		st.Mode = unix.S_IFDIR
	} else if err != nil {
		return "", os.NewSyscallError("lstat", err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		a.passed(p, markedParent)
		return p, nil
	case unix.S_IFLNK:
		a.passed(p, markedLink)
		return a.follow(dir, p, create, links)
	}
	return "", invalid("/%s is not a directory", p)
}

// follow resolves the symlink at p, found in the real directory dir.
func (a *applier) follow(dir, p string, create bool, links *int) (string, error) {
	if *links++; *links > maxSymlinks {
		return "", invalid("too many levels of symbolic links at /%s", p)
	}
	target, err := os.Readlink(a.full(p))
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(target, "/") {
		dir = ""
	}
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			if dir == "" {
				return "", invalid("symlink /%s leads outside the layer root", p)
			}
			dir = parentDir(dir)
		default:
			if dir, err = a.step(dir, c, create, links); err != nil {
				return "", err
			}
		}
	}
	return dir, nil
}

// passed records that this layer went through p, unless it wrote p itself.
func (a *applier) passed(p string, m mark) {
	if a.written[p] < markedParent {
		a.written[p] = m
	}
}

// join joins relative real paths, "" being the root.
func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func parentDir(p string) string {
	if d := path.Dir(p); d != "." {
		return d
	}
	return ""
}
