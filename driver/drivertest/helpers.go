package drivertest

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/strata-storage/strata/driver"
	"golang.org/x/sys/unix"
)

// epoch is the mtime of tar entries that name none: far from now, so a
// layer populated by tar never shares a second with the test's own writes.
var epoch = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

// entry is one member of a layer tar built by a test.
type entry struct {
	hdr  tar.Header
	body string
}

func file(name, body string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}, body: body}
}

func dir(name string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
}

func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func hardlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
}

// whiteout deletes name in the layer below, as layer tars spell it.
func whiteout(name string) entry {
	return file(path.Join(path.Dir(name), ".wh."+path.Base(name)), "")
}

// opaque hides, in the layer below, everything in directory name.
func opaque(name string) entry {
	return file(path.Join(name, ".wh..wh..opq"), "")
}

// owned sets the owner of e.
func owned(e entry, uid, gid int) entry {
	e.hdr.Uid, e.hdr.Gid = uid, gid
	return e
}

func withMode(e entry, mode int64) entry {
	e.hdr.Mode = mode
	return e
}

func withTime(e entry, mtime time.Time) entry {
	e.hdr.ModTime = mtime
	return e
}

// layerTar returns an uncompressed layer tar of entries (PAX, so that
// nanosecond times survive).
func layerTar(t *testing.T, entries ...entry) *bytes.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := e.hdr
		hdr.Format = tar.FormatPAX
		if hdr.ModTime.IsZero() {
			hdr.ModTime = epoch
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatalf("tar header %s: %v", hdr.Name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatalf("tar body %s: %v", hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(buf.Bytes())
}

// create makes a read-only layer and applies entries to it, if any.
func create(t *testing.T, d driver.Driver, id, parent string, entries ...entry) {
	t.Helper()
	if err := d.Create(id, parent, nil); err != nil {
		t.Fatalf("Create(%s, %s): %v", id, parent, err)
	}
	if len(entries) > 0 {
		apply(t, d, id, parent, layerTar(t, entries...))
	}
}

func createRW(t *testing.T, d driver.Driver, id, parent string) {
	t.Helper()
	if err := d.CreateReadWrite(id, parent, nil); err != nil {
		t.Fatalf("CreateReadWrite(%s, %s): %v", id, parent, err)
	}
}

func apply(t *testing.T, d driver.Driver, id, parent string, r io.Reader) int64 {
	t.Helper()
	n, err := d.ApplyDiff(id, parent, r)
	if err != nil {
		t.Fatalf("ApplyDiff(%s, %s): %v", id, parent, err)
	}
	return n
}

func get(t *testing.T, d driver.Driver, id string) string {
	t.Helper()
	p, err := d.Get(id, "")
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return p
}

func put(t *testing.T, d driver.Driver, id string) {
	t.Helper()
	if err := d.Put(id); err != nil {
		t.Fatalf("Put(%s): %v", id, err)
	}
}

// diff returns the whole layer tar of id against parent.
func diff(t *testing.T, d driver.Driver, id, parent string) *bytes.Reader {
	t.Helper()
	rc, err := d.Diff(id, parent)
	if err != nil {
		t.Fatalf("Diff(%s, %s): %v", id, parent, err)
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Diff(%s, %s): read: %v", id, parent, err)
	}
	if err := rc.Close(); err != nil {
		t.Fatalf("Diff(%s, %s): close: %v", id, parent, err)
	}
	return bytes.NewReader(b)
}

// checkChanges compares Changes(id, parent) with want, given as "C /a".
func checkChanges(t *testing.T, d driver.Driver, id, parent string, want ...string) {
	t.Helper()
	changes, err := d.Changes(id, parent)
	if err != nil {
		t.Fatalf("Changes(%s, %s): %v", id, parent, err)
	}
	got := make([]string, len(changes))
	for i, c := range changes {
		got[i] = c.Kind.String() + " " + c.Path
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Changes(%s, %s):\n got %q\nwant %q", id, parent, got, want)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func lstat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return &st
}

func mustNotExist(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: want it absent, lstat says %v", p, err)
	}
}

// names lists the entries of directory p, sorted.
func names(t *testing.T, p string) []string {
	t.Helper()
	entries, err := os.ReadDir(p)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.Name()
	}
	return out
}

// snapshot describes every entry under root by what a layer must
// reproduce: type, mode, owner, size, content, link target, device number,
// xattrs and, for files, the mtime. Directory times are left out: adding
// an entry changes them on some drivers and not others.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o owner=%d:%d", st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" size=%d content=%q mtime=%d", st.Size, b, st.Mtim.Nano())
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			desc += fmt.Sprintf(" rdev=%d", st.Rdev)
		}
		desc += xattrs(p)
		out[strings.TrimPrefix(p, root)] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", root, err)
	}
	return out
}

func xattrs(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	var list []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if strings.HasPrefix(name, "trusted.overlay.") {
			continue
		}
		val := make([]byte, 64<<10)
		m, _ := unix.Lgetxattr(p, name, val)
		list = append(list, fmt.Sprintf(" %s=%q", name, val[:max(m, 0)]))
	}
	slices.Sort(list)
	return strings.Join(list, "")
}

func checkSameTree(t *testing.T, got, want string) {
	t.Helper()
	g, w := snapshot(t, got), snapshot(t, want)
	for p, wd := range w {
		if gd, ok := g[p]; !ok {
			t.Errorf("%s: missing", p)
		} else if gd != wd {
			t.Errorf("%s:\n got %s\nwant %s", p, gd, wd)
		}
	}
	for p := range g {
		if _, ok := w[p]; !ok {
			t.Errorf("%s: unexpected", p)
		}
	}
}

// mountedUnder returns the mount points at or below any of dirs.
func mountedUnder(t *testing.T, dirs ...string) []string {
	t.Helper()
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range mounts {
		for _, d := range dirs {
			if m.Mountpoint == d || strings.HasPrefix(m.Mountpoint, d+"/") {
				out = append(out, m.Mountpoint)
			}
		}
	}
	return out
}

// mountCount returns how many mounts are stacked exactly at p.
func mountCount(t *testing.T, p string) int {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(p))
	if err != nil {
		t.Fatal(err)
	}
	return len(mounts)
}
