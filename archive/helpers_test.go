package archive

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners, devices and trusted xattrs")
	}
}

// entry is one tar entry to build: a header and, for regular files, content.
type entry struct {
	hdr  tar.Header
	body string
}

func file(name, body string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(1700000000, 0)}, body: body}
}

func dir(name string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(1700000000, 0)}}
}

func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, ModTime: time.Unix(1700000000, 0)}}
}

func hardlink(name, target string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target, ModTime: time.Unix(1700000000, 0)}}
}

// tarOf builds an uncompressed tar of entries.
func tarOf(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := e.hdr
		hdr.Size = int64(len(e.body))
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fileState is what a round trip must keep of a file (all but atime and ctime).
type fileState struct {
	Mode     uint32
	Uid, Gid uint32
	Size     int64
	Mtime    unix.Timespec
	Rdev     uint64
	Link     string
	Content  string
	Xattrs   map[string]string
	SameAs   string // the first path with the same inode, for hard links
}

// snapshot records the state of every file under dir but dir itself.
func snapshot(t testing.TB, dir string) map[string]fileState {
	t.Helper()
	files := make(map[string]fileState)
	inodes := make(map[uint64]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel := p[len(dir):]
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		s := fileState{Mode: st.Mode, Uid: st.Uid, Gid: st.Gid, Mtime: st.Mtim, Rdev: st.Rdev}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			s.Size = st.Size
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s.Content = string(b)
			if first, ok := inodes[st.Ino]; ok {
				s.SameAs = first
			} else {
				inodes[st.Ino] = rel
			}
		case unix.S_IFLNK:
			if s.Link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if s.Xattrs, err = listXattrs(p); err != nil {
			return err
		}
		files[rel] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func compareTrees(t testing.TB, want, got map[string]fileState) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s: missing", p)
			continue
		}
		if !maps.Equal(w.Xattrs, g.Xattrs) || w.Mode != g.Mode || w.Uid != g.Uid || w.Gid != g.Gid ||
			w.Size != g.Size || w.Mtime != g.Mtime || w.Rdev != g.Rdev || w.Link != g.Link ||
			w.Content != g.Content || w.SameAs != g.SameAs {
			t.Errorf("%s:\n got %+v\nwant %+v", p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: unexpected", p)
		}
	}
}

func mustDo(t testing.TB, errs ...error) {
	t.Helper()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func setMtime(t testing.TB, p string, sec, nsec int64) {
	t.Helper()
	ts := []unix.Timespec{{Sec: sec, Nsec: nsec}, {Sec: sec, Nsec: nsec}}
	mustDo(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
}

// tarNames lists the entry names of a tar.
func tarNames(t testing.TB, b []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, hdr.Name)
	}
	return names
}
