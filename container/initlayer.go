package container

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// initEntries are the mount points and files a runtime binds over, which
// Docker puts in every container's init layer: directories 0755, empty
// files 0755 (Docker creates them with that mode), all owned by root.
var initEntries = []struct {
	path   string
	kind   byte   // tar type flag
	target string // of the symlink
}{
	{"/dev/pts", tar.TypeDir, ""},
	{"/dev/shm", tar.TypeDir, ""},
	{"/proc", tar.TypeDir, ""},
	{"/sys", tar.TypeDir, ""},
	{"/.dockerenv", tar.TypeReg, ""},
	{"/etc/resolv.conf", tar.TypeReg, ""},
	{"/etc/hosts", tar.TypeReg, ""},
	{"/etc/hostname", tar.TypeReg, ""},
	{"/dev/console", tar.TypeReg, ""},
	{"/etc/mtab", tar.TypeSymlink, "/proc/mounts"},
}

// initLayer returns the layer tar of the init layer on top of the layer
// parent ("" = none), written as a tar so that every driver gets it through
// ApplyDiff. It reproduces what Docker's setup does in the mounted image:
// a non-directory in the way of an entry, or of one of its parents, is
// replaced; an existing directory is left as it is; a parent directory
// keeps the image's mode and owner, as an overlay copy-up would.
func (s *Store) initLayer(parent string) (io.Reader, error) {
	image := ""
	if parent != "" {
		dir, err := s.driver.Get(parent, "")
		if err != nil {
			return nil, err
		}
		defer s.driver.Put(parent)
		image = dir
	}
	// lstat returns what the image has at p, ok false when nothing; the
	// caller only asks for paths whose parents are real directories, so
	// no symlink of the image is ever followed.
	lstat := func(p string) (st unix.Stat_t, ok bool, err error) {
		if image == "" {
			return st, false, nil
		}
		err = unix.Lstat(image+p, &st)
		if errors.Is(err, unix.ENOENT) {
			return st, false, nil
		}
		return st, err == nil, err
	}

	now := time.Now()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	write := func(hdr *tar.Header) error {
		hdr.Name = strings.TrimPrefix(hdr.Name, "/")
		hdr.ModTime = now
		hdr.Format = tar.FormatPAX
		return tw.WriteHeader(hdr)
	}
	done := map[string]bool{}
	realDir := map[string]bool{"/": image != ""}
	for _, e := range initEntries {
		var parents []string
		for d := path.Dir(e.path); d != "/"; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if done[d] {
				continue
			}
			done[d] = true
			hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}
			if realDir[path.Dir(d)] {
				st, ok, err := lstat(d)
				if err != nil {
					return nil, err
				}
				if ok && st.Mode&unix.S_IFMT == unix.S_IFDIR {
					realDir[d] = true
					hdr.Mode, hdr.Uid, hdr.Gid = int64(st.Mode&0o7777), int(st.Uid), int(st.Gid)
				}
			}
			if err := write(hdr); err != nil {
				return nil, err
			}
		}
		if realDir[path.Dir(e.path)] {
			st, ok, err := lstat(e.path)
			if err != nil {
				return nil, err
			}
			if ok && st.Mode&unix.S_IFMT == unix.S_IFDIR {
				continue
			}
		}
		hdr := &tar.Header{Typeflag: e.kind, Name: e.path, Mode: 0o755, Linkname: e.target}
		if e.kind == tar.TypeSymlink {
			hdr.Mode = 0o777
		}
		if err := write(hdr); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}
