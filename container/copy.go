package container

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/strata-storage/strata/archive"
	"github.com/strata-storage/strata/errdefs"
)

// This file serves docker cp, as the Engine API's /containers/{id}/archive
// does: Stat (HEAD), CopyFrom (GET) and CopyTo (PUT). Each mounts the
// container for its duration and resolves every path inside the mounted
// root as a chroot would: a symlink to "/etc" means the container's /etc,
// and ".." stops at the root.

// PathStat describes a path of a container, as the Engine API's
// X-Docker-Container-Path-Stat header does.
type PathStat struct {
	Name  string      `json:"name"`
	Size  int64       `json:"size"`
	Mode  os.FileMode `json:"mode"`
	Mtime time.Time   `json:"mtime"`
	// LinkTarget is, for a symlink, the absolute path in the container that
	// it leads to once every link is followed inside the root.
	LinkTarget string `json:"linkTarget"`
}

// CopyToOptions tune CopyTo.
type CopyToOptions struct {
	// CopyUIDGID keeps the owners the tar gives; otherwise everything
	// copied in is owned by root.
	CopyUIDGID bool
	// AsUser (docker cp -a) gives everything copied in to the user the
	// container's config names, looked up in the container's /etc/passwd
	// and /etc/group (dockerd looks it up on the host); a container without
	// one gets the tar's owners.
	AsUser bool
}

// containerPath is a path of a container and where it is on the host.
type containerPath struct {
	abs string // clean and absolute in the container; a trailing "/" or "/." kept
	// host is the path's directory resolved inside the root plus its last
	// element unresolved: a symlink there is the link itself.
	host string
}

// contents reports whether p names a directory's content (".../." or
// "/") rather than the directory itself.
func (p containerPath) contents() bool {
	return p.abs == "/" || strings.HasSuffix(p.abs, "/.")
}

// resolvePath resolves p, taken as absolute in the container, inside root.
func resolvePath(root, p string) (containerPath, error) {
	abs := path.Join("/", p)
	switch {
	case abs == "/":
	case p == "." || strings.HasSuffix(p, "/."):
		abs += "/."
	case strings.HasSuffix(p, "/"):
		abs += "/"
	}
	dir, base := path.Split(abs)
	hostDir, err := securejoin.SecureJoin(root, dir)
	if err != nil {
		return containerPath{}, fmt.Errorf("resolve %s: %w", p, err)
	}
	host := hostDir
	if base != "" {
		host = filepath.Join(hostDir, base)
		if base == "." {
			host += "/."
		}
	}
	return containerPath{abs: abs, host: host}, nil
}

// stat describes p in the container c mounted at root.
func stat(root string, c Container, p string) (PathStat, containerPath, error) {
	cp, err := resolvePath(root, p)
	if err != nil {
		return PathStat{}, cp, err
	}
	fi, err := os.Lstat(cp.host)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return PathStat{}, cp, fmt.Errorf("Could not find the file %s in container %s: %w", p, c.Name, errdefs.ErrNotFound)
	case errors.Is(err, syscall.ENOTDIR), err == nil && strings.HasSuffix(cp.abs, "/") && !fi.IsDir():
		return PathStat{}, cp, fmt.Errorf("%s in container %s: not a directory: %w", p, c.Name, errdefs.ErrInvalid)
	case err != nil:
		return PathStat{}, cp, err
	}
	st := PathStat{Name: path.Base(cp.abs), Size: fi.Size(), Mode: fi.Mode(), Mtime: fi.ModTime()}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, err := securejoin.SecureJoin(root, cp.abs)
		if err != nil {
			return PathStat{}, cp, fmt.Errorf("resolve %s: %w", p, err)
		}
		rel, err := filepath.Rel(root, target)
		if err != nil {
			return PathStat{}, cp, err
		}
		st.LinkTarget = path.Join("/", filepath.ToSlash(rel))
	}
	return st, cp, nil
}

// Stat describes the path p of the container; a symlink as its last
// element is described itself, with the path it leads to.
func (s *Store) Stat(c Container, p string) (PathStat, error) {
	root, err := s.driver.Get(c.ID, "")
	if err != nil {
		return PathStat{}, err
	}
	st, _, err := stat(root, c, p)
	return st, errors.Join(err, s.driver.Put(c.ID))
}

// CopyFrom returns a tar of the file or tree at path p of the container and
// its description. The top entry is named by p's last element (a symlink
// there is copied as the link); for ".../." or "/", whose PathStat names
// are "." and "/", the tar holds the directory's content, names relative to
// it. The container stays mounted until the reader is closed.
func (s *Store) CopyFrom(c Container, p string) (io.ReadCloser, PathStat, error) {
	root, err := s.driver.Get(c.ID, "")
	if err != nil {
		return nil, PathStat{}, err
	}
	st, cp, err := stat(root, c, p)
	if err == nil && cp.contents() && !st.Mode.IsDir() {
		err = fmt.Errorf("%s in container %s: not a directory: %w", p, c.Name, errdefs.ErrInvalid)
	}
	if err != nil {
		return nil, PathStat{}, errors.Join(err, s.driver.Put(c.ID))
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	name := st.Name
	if cp.contents() {
		name = ""
	}
	go func() {
		defer close(done)
		pw.CloseWithError(WriteTar(pw, cp.host, name))
	}()
	release := func() error { return s.driver.Put(c.ID) }
	return &mountedReader{PipeReader: pr, done: done, release: release}, st, nil
}

// WriteTar writes the file or tree at hostPath to w as a tar whose top
// entry is named name (a symlink at hostPath is written as the link) or,
// with name "", the content of the directory hostPath, names relative to it.
func WriteTar(w io.Writer, hostPath, name string) error {
	if name == "" {
		return archive.WriteDir(w, hostPath, archive.WriteOptions{})
	}
	dir, base := filepath.Split(filepath.Clean(hostPath))
	var changes []archive.Change
	err := filepath.WalkDir(dir+base, func(full string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		changes = append(changes, archive.Change{Path: "/" + full[len(dir):], Kind: archive.ChangeAdd})
		return nil
	})
	if err != nil {
		return err
	}
	if base == name {
		return archive.WriteChanges(w, dir, changes)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(archive.WriteChanges(pw, dir, changes)) }()
	defer pr.Close() // stops the writer should the copy end early
	rc := Rebase(pr, base, name)
	defer rc.Close()
	_, err = io.Copy(w, rc)
	return err
}

// mountedReader releases the container's mount once the tar writer has
// stopped, however early the reader is closed.
type mountedReader struct {
	*io.PipeReader
	done    chan struct{}
	once    sync.Once
	release func() error
	err     error
}

func (r *mountedReader) Close() error {
	r.once.Do(func() {
		r.PipeReader.Close()
		<-r.done
		r.err = r.release()
	})
	return r.err
}

// CopyTo extracts the tar r into the directory at path p of the container
// (symlinks followed inside the root). As with docker cp, an entry may not
// replace a directory with a non-directory or the reverse, whiteout names
// are plain files, and without opts.CopyUIDGID everything is owned by root.
// Nothing is written outside the directory.
func (s *Store) CopyTo(c Container, p string, r io.Reader, opts CopyToOptions) (err error) {
	root, err := s.driver.Get(c.ID, "")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.driver.Put(c.ID)) }()
	dir, err := securejoin.SecureJoin(root, path.Join("/", p))
	if err != nil {
		return fmt.Errorf("resolve %s: %w", p, err)
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("Could not find the file %s in container %s: %w", p, c.Name, errdefs.ErrNotFound)
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("extraction point %s in container %s is not a directory: %w", p, c.Name, errdefs.ErrInvalid)
	}
	owner, err := copyOwner(c, root, opts)
	if err != nil {
		return err
	}
	checked := rewrite(r, func(hdr *tar.Header) error {
		if owner != nil {
			hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = owner[0], owner[1], "", ""
		}
		return noDirSwap(dir, hdr)
	})
	defer checked.Close()
	if _, err := archive.Apply(dir, checked, archive.ApplyOptions{Whiteouts: archive.WhiteoutAUFS}); err != nil {
		return fmt.Errorf("copy to %s in container %s: %w", p, c.Name, err)
	}
	return nil
}

// copyOwner returns the uid and gid CopyTo gives everything it copies into
// c mounted at root, nil to keep the tar's.
func copyOwner(c Container, root string, opts CopyToOptions) (*[2]int, error) {
	if opts.AsUser {
		user, err := configUser(c)
		if err != nil || user == "" {
			return nil, err
		}
		uid, gid, err := lookupUser(root, user)
		if err != nil {
			return nil, fmt.Errorf("copy to container %s as its user: %w", c.Name, err)
		}
		return &[2]int{uid, gid}, nil
	}
	if opts.CopyUIDGID {
		return nil, nil
	}
	return &[2]int{0, 0}, nil
}

// noDirSwap refuses an entry that would replace a directory in dir with a
// non-directory, or the reverse, as docker cp does: extraction would
// otherwise delete the whole directory.
func noDirSwap(dir string, hdr *tar.Header) error {
	name := path.Clean("/" + hdr.Name)
	if name == "/" {
		return nil
	}
	parent, err := securejoin.SecureJoin(dir, path.Dir(name))
	if err != nil {
		return err
	}
	fi, err := os.Lstat(filepath.Join(parent, path.Base(name)))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	if err != nil {
		return err
	}
	switch isDir := hdr.Typeflag == tar.TypeDir; {
	case fi.IsDir() && !isDir:
		return fmt.Errorf("cannot overwrite directory %q with non-directory %q: %w", name, hdr.Name, errdefs.ErrInvalid)
	case !fi.IsDir() && isDir:
		return fmt.Errorf("cannot overwrite non-directory %q with directory %q: %w", name, hdr.Name, errdefs.ErrInvalid)
	}
	return nil
}

// Rebase renames the top entry from of the tar r, and everything under it,
// to, as docker cp does to copy a file or tree under another name. With
// from "", every entry is moved under to.
func Rebase(r io.Reader, from, to string) io.ReadCloser {
	return rewrite(r, func(hdr *tar.Header) error {
		hdr.Name = rebaseName(hdr.Name, from, to)
		if hdr.Typeflag == tar.TypeLink {
			hdr.Linkname = rebaseName(hdr.Linkname, from, to)
		}
		return nil
	})
}

func rebaseName(name, from, to string) string {
	trimmed := strings.TrimPrefix(strings.TrimLeft(name, "/"), "./")
	switch {
	case from == "":
		return path.Join(to, trimmed) + trailingSlash(name)
	case trimmed == from || strings.TrimSuffix(trimmed, "/") == from:
		return to + trailingSlash(name)
	case strings.HasPrefix(trimmed, from+"/"):
		return to + trimmed[len(from):]
	}
	return name
}

func trailingSlash(name string) string {
	if strings.HasSuffix(name, "/") {
		return "/"
	}
	return ""
}

// rewrite passes the tar r through edit, entry by entry, and returns the
// edited tar.
func rewrite(r io.Reader, edit func(*tar.Header) error) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		tr := tar.NewReader(r)
		tw := tar.NewWriter(pw)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				pw.CloseWithError(tw.Close())
				return
			}
			if errors.Is(err, tar.ErrInsecurePath) {
				err = nil // for the extraction to refuse, or not
			}
			if err == nil {
				hdr.Format = tar.FormatPAX // names may grow; keep nanosecond times
				err = edit(hdr)
			}
			if err == nil {
				err = tw.WriteHeader(hdr)
			}
			if err == nil {
				_, err = io.Copy(tw, tr)
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
	}()
	return pr
}
