package aufs_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-storage/strata/driver"
	_ "github.com/strata-storage/strata/driver/overlay"
	"github.com/strata-storage/strata/errdefs"
	"golang.org/x/sys/unix"
)

// TestDifferentialAgainstOverlay mounts the same layer stack with kernel
// overlayfs and with strata's union file system, runs the same workload in
// both, and compares the merged trees, the change lists and the layer
// tars. The one expected difference: kernel overlay refuses to rename a
// directory of a lower layer (EXDEV), where the union renames it; the
// workload then does what mv does on EXDEV (copy, then delete) on overlay.
func TestDifferentialAgainstOverlay(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting overlay needs root")
	}
	stacks := map[string]driver.Driver{}
	for _, name := range []string{"overlay", "aufs"} {
		d, err := driver.New(t.TempDir(), name, nil)
		if errors.Is(err, errdefs.ErrNotSupported) {
			t.Skipf("%s does not work here: %v", name, err)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Cleanup() })
		stacks[name] = d
		buildStack(t, d)
	}
	roots := map[string]string{}
	for name, d := range stacks {
		root, err := d.Get("top", "")
		if err != nil {
			t.Fatal(err)
		}
		roots[name] = root
	}
	for _, s := range workload {
		o, a := s.run(roots["overlay"]), s.run(roots["aufs"])
		if s.overlayEXDEV {
			if !errors.Is(o, syscall.EXDEV) {
				t.Errorf("%s on overlay: %v, want EXDEV (the difference this test expects)", s.name, o)
			}
			if a != nil {
				t.Errorf("%s on aufs: %v, want it done", s.name, a)
			}
			o = s.fallback(roots["overlay"])
		}
		if errnoOf(o) != errnoOf(a) {
			t.Errorf("%s: overlay %v, aufs %v", s.name, o, a)
		}
	}
	compareMaps(t, "merged tree", describeTree(t, roots["overlay"]), describeTree(t, roots["aufs"]))
	for _, d := range stacks {
		if err := d.Put("top"); err != nil {
			t.Fatal(err)
		}
	}
	changes := map[string][]string{}
	tars := map[string]map[string]string{}
	for name, d := range stacks {
		list, err := d.Changes("top", "mid")
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range list {
			changes[name] = append(changes[name], c.Kind.String()+" "+c.Path)
		}
		tars[name] = describeDiff(t, d)
	}
	if !slices.Equal(changes["overlay"], changes["aufs"]) {
		t.Errorf("changes differ:\noverlay %q\n   aufs %q", changes["overlay"], changes["aufs"])
	}
	compareMaps(t, "layer tar", tars["overlay"], tars["aufs"])
}

// buildStack makes base and mid from the same layer tars, and the
// read-write top on them.
func buildStack(t *testing.T, d driver.Driver) {
	t.Helper()
	layers := []struct {
		id, parent string
		entries    []tarEntry
	}{
		{"base", "", []tarEntry{
			dirEntry("etc", 0o755), fileEntry("etc/passwd", "root:x:0:0", 0o644), fileEntry("etc/hosts", "127.0.0.1", 0o644),
			fileEntry("etc/shadow", "secret", 0o600), fileEntry("etc/group", "root:x:0", 0o644),
			xattrEntry(fileEntry("etc/xattrfile", "x", 0o644), "user.old", "1"),
			dirEntry("bin", 0o755), fileEntry("bin/sh", "#!sh", 0o755),
			dirEntry("lib", 0o755), fileEntry("lib/libc.so", "libc", 0o755),
			dirEntry("usr", 0o755), dirEntry("usr/share", 0o755), dirEntry("usr/share/doc", 0o755),
			fileEntry("usr/share/doc/a", "a", 0o644), dirEntry("usr/share/doc/sub", 0o700), fileEntry("usr/share/doc/sub/b", "b", 0o644),
			dirEntry("opt", 0o755), dirEntry("opt/app", 0o750), fileEntry("opt/app/run", "run", 0o755),
			linkEntry("opt/app/run2", "opt/app/run"), symlinkEntry("opt/app/current", "run"),
			dirEntry("var", 0o755), dirEntry("var/log", 0o755), fileEntry("var/log/app.log", "line1\n", 0o640),
			fileEntry("var/big", strings.Repeat("z", 100000), 0o644),
			dirEntry("data", 0o755), fileEntry("data/old", "old", 0o644),
		}},
		{"mid", "base", []tarEntry{
			fileEntry("etc/passwd", "root:x:0:0\nuser:x:1000:1000", 0o644),
			dirEntry("usr/lib", 0o755), dirEntry("usr/bin", 0o755), fileEntry("usr/bin/tool", "tool", 0o755),
			fileEntry("opt/app/config", "conf", 0o644),
			fileEntry("data/.wh..wh..opq", "", 0o644), fileEntry("data/new", "new", 0o644), fileEntry("data/kept", "kept", 0o644),
			fileEntry("bin/.wh.gone", "", 0o644),
		}},
	}
	for _, l := range layers {
		if err := d.Create(l.id, l.parent, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := d.ApplyDiff(l.id, l.parent, layerTar(t, l.entries)); err != nil {
			t.Fatalf("%s: apply %s: %v", d, l.id, err)
		}
	}
	if err := d.CreateReadWrite("top", "mid", nil); err != nil {
		t.Fatal(err)
	}
}

// step is one operation of the workload, on paths relative to a root.
type step struct {
	name         string
	run          func(root string) error
	overlayEXDEV bool
	fallback     func(root string) error
}

var workload = []step{
	{name: "create", run: func(r string) error { return os.WriteFile(r+"/new.txt", []byte("new"), 0o644) }},
	{name: "overwrite", run: func(r string) error { return os.WriteFile(r+"/etc/passwd", []byte("rewritten"), 0o644) }},
	{name: "append", run: func(r string) error {
		f, err := os.OpenFile(r+"/var/log/app.log", os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString("line2\n")
		return errors.Join(err, f.Close())
	}},
	{name: "delete a lower file", run: func(r string) error { return os.Remove(r + "/etc/hosts") }},
	{name: "delete a lower dir", run: func(r string) error { return os.RemoveAll(r + "/usr/share/doc") }},
	{name: "recreate the deleted dir", run: func(r string) error {
		return errors.Join(os.Mkdir(r+"/usr/share/doc", 0o755), os.WriteFile(r+"/usr/share/doc/README", []byte("readme"), 0o644))
	}},
	{name: "delete in an opaque dir", run: func(r string) error { return os.Remove(r + "/data/kept") }},
	{name: "rename a file across layers", run: func(r string) error { return os.Rename(r+"/lib/libc.so", r+"/usr/lib/libc.so") }},
	{name: "rename a lower dir", overlayEXDEV: true,
		run: func(r string) error { return unix.Rename(r+"/opt/app", r+"/srv") },
		fallback: func(r string) error {
			out, err := exec.Command("cp", "-a", r+"/opt/app", r+"/srv").CombinedOutput()
			if err != nil {
				return fmt.Errorf("cp -a: %v: %s", err, out)
			}
			return os.RemoveAll(r + "/opt/app")
		}},
	{name: "chmod", run: func(r string) error { return os.Chmod(r+"/bin/sh", 0o700) }},
	{name: "chown", run: func(r string) error { return os.Lchown(r+"/etc/shadow", 42, 43) }},
	{name: "hard link", run: func(r string) error { return os.Link(r+"/usr/bin/tool", r+"/usr/bin/tool2") }},
	{name: "symlink", run: func(r string) error { return os.Symlink("../usr/bin/tool", r+"/etc/alt") }},
	{name: "xattr set", run: func(r string) error { return unix.Lsetxattr(r+"/etc/group", "user.test", []byte("v"), 0) }},
	{name: "xattr remove", run: func(r string) error { return unix.Lremovexattr(r+"/etc/xattrfile", "user.old") }},
	{name: "truncate", run: func(r string) error { return os.Truncate(r+"/var/big", 10) }},
	{name: "fifo", run: func(r string) error {
		return errors.Join(os.Mkdir(r+"/run", 0o755), syscall.Mkfifo(r+"/run/fifo", 0o600))
	}},
	{name: "rmdir non-empty", run: func(r string) error { return syscall.Rmdir(r + "/var/log") }},
	{name: "rename onto a lower file", run: func(r string) error { return os.Rename(r+"/new.txt", r+"/etc/group") }},
}

// errnoOf returns the errno of err, 0 for none, -1 for another error.
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if err == nil {
		return 0
	}
	if errors.As(err, &errno) {
		return errno
	}
	return ^syscall.Errno(0)
}

// describeTree describes every entry under root by name, type, mode, owner,
// size, content, link target, device and xattrs; times are left out (the
// two runs happen at different times).
func describeTree(t *testing.T, root string) map[string]string {
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
			desc += fmt.Sprintf(" size=%d sha=%x", st.Size, sha256.Sum256(b))
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			desc += fmt.Sprintf(" rdev=%d", st.Rdev)
		}
		out[strings.TrimPrefix(p, root)] = desc + xattrsOf(p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func xattrsOf(p string) string {
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

// describeDiff describes each entry of top's layer tar, times left out.
func describeDiff(t *testing.T, d driver.Driver) map[string]string {
	t.Helper()
	rc, err := d.Diff("top", "mid")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		var xattrs []string
		for k, v := range hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				xattrs = append(xattrs, k+"="+v)
			}
		}
		slices.Sort(xattrs)
		out[hdr.Name] = fmt.Sprintf("type=%c mode=%o owner=%d:%d size=%d link=%q sha=%x %v",
			hdr.Typeflag, hdr.Mode, hdr.Uid, hdr.Gid, hdr.Size, hdr.Linkname, sha256.Sum256(body), xattrs)
	}
	return out
}

func compareMaps(t *testing.T, what string, overlay, aufs map[string]string) {
	t.Helper()
	for p, o := range overlay {
		if a, ok := aufs[p]; !ok {
			t.Errorf("%s: %s on overlay only: %s", what, p, o)
		} else if a != o {
			t.Errorf("%s: %s\noverlay %s\n   aufs %s", what, p, o, a)
		}
	}
	for p, a := range aufs {
		if _, ok := overlay[p]; !ok {
			t.Errorf("%s: %s on aufs only: %s", what, p, a)
		}
	}
}

// tarEntry is one member of a layer tar built by a test.
type tarEntry struct {
	hdr  tar.Header
	body string
}

func fileEntry(name, body string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: body}
}

func dirEntry(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
}

func symlinkEntry(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func linkEntry(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
}

func xattrEntry(e tarEntry, key, value string) tarEntry {
	e.hdr.PAXRecords = map[string]string{"SCHILY.xattr." + key: value}
	return e
}

func layerTar(t *testing.T, entries []tarEntry) io.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := e.hdr
		hdr.Format = tar.FormatPAX
		hdr.ModTime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}
