package archive

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fileCap is a version 2 security.capability granting cap_net_bind_service.
var fileCap = []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// makeTree fills dir with a bit of everything a layer can hold.
func makeTree(t testing.TB, dir string) (contentBytes int64) {
	t.Helper()
	big := make([]byte, 3<<20+17)
	rand.Read(big)
	mkdir := func(p string, mode uint32) {
		mustDo(t, os.Mkdir(filepath.Join(dir, p), 0), unix.Chmod(filepath.Join(dir, p), mode))
	}
	write := func(p string, mode uint32, body []byte) {
		mustDo(t, os.WriteFile(filepath.Join(dir, p), body, 0), unix.Chmod(filepath.Join(dir, p), mode))
		contentBytes += int64(len(body))
	}
	mkdir("etc", 0o755)
	write("etc/passwd", 0o644, []byte("root:x:0:0::/root:/bin/sh\n"))
	write("etc/empty", 0o600, nil)
	mkdir("bin", 0o755)
	write("bin/busybox", 0o755, big)
	mustDo(t, os.Link(filepath.Join(dir, "bin/busybox"), filepath.Join(dir, "bin/sh")))
	mustDo(t, os.Link(filepath.Join(dir, "bin/busybox"), filepath.Join(dir, "bin/ls")))
	write("bin/su", 0o755, []byte("su"))
	mustDo(t, unix.Chmod(filepath.Join(dir, "bin/su"), 0o4755))
	write("bin/ping", 0o755, []byte("ping"))
	mustDo(t, unix.Lsetxattr(filepath.Join(dir, "bin/ping"), "security.capability", fileCap, 0))
	mustDo(t, unix.Lsetxattr(filepath.Join(dir, "bin/ping"), "user.note", []byte("pong"), 0))
	mkdir("tmp", 0o1777)
	mkdir("srv", 0o2775)
	mustDo(t, unix.Lsetxattr(filepath.Join(dir, "srv"), "user.dir", []byte("x"), 0))
	mkdir("home", 0o755)
	mkdir("home/user", 0o700)
	write("home/user/notes", 0o640, []byte("data"))
	mustDo(t, os.Lchown(filepath.Join(dir, "home/user"), 1000, 1000), os.Lchown(filepath.Join(dir, "home/user/notes"), 1000, 1001))
	mkdir("usr", 0o755)
	mkdir("usr/lib", 0o755)
	mustDo(t, os.Symlink("usr/lib", filepath.Join(dir, "lib")), os.Lchown(filepath.Join(dir, "lib"), 1000, 1000))
	mustDo(t, os.Symlink("/etc/passwd", filepath.Join(dir, "usr/lib/abs")))
	contentBytes += int64(len("usr/lib") + len("/etc/passwd")) // a symlink's size is its target's length
	mkdir("dev", 0o755)
	mustDo(t, unix.Mknod(filepath.Join(dir, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	mustDo(t, unix.Mknod(filepath.Join(dir, "dev/sda"), unix.S_IFBLK|0o660, int(unix.Mkdev(8, 0))))
	mustDo(t, unix.Mknod(filepath.Join(dir, "dev/fifo"), unix.S_IFIFO|0o600, 0))
	mustDo(t, unix.Chmod(filepath.Join(dir, "dev/null"), 0o666))

	// Distinct nanosecond mtimes, children before their directories.
	var paths []string
	mustDo(t, filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	}))
	slices.Reverse(paths)
	for i, p := range paths[:len(paths)-1] {
		setMtime(t, p, 1600000000+int64(i), 123456789+int64(i))
	}
	return contentBytes
}

func TestRoundTrip(t *testing.T) {
	requireRoot(t)
	old := syscall.Umask(0o077) // Apply must not depend on the umask.
	defer syscall.Umask(old)
	src, dst := t.TempDir(), t.TempDir()
	content := makeTree(t, src)
	var buf bytes.Buffer
	if err := WriteDir(&buf, src, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	names := tarNames(t, buf.Bytes())
	if !slices.IsSorted(names) || names[0] != "bin/" || !slices.Contains(names, "etc/passwd") {
		t.Errorf("entries not relative in lexical order: %q", names)
	}
	n, err := Apply(dst, bytes.NewReader(buf.Bytes()), ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n != content {
		t.Errorf("Apply wrote %d bytes of content, want %d", n, content)
	}
	compareTrees(t, snapshot(t, src), snapshot(t, dst))
}

func TestOverlayWhiteouts(t *testing.T) {
	requireRoot(t)
	upper := t.TempDir()
	layer := tarOf(t, file(".wh.gone", ""), dir("d/"), file("d/.wh..wh..opq", ""), file("d/new", "new"),
		file("e/.wh..wh..opq", ""))
	if _, err := Apply(upper, bytes.NewReader(layer), ApplyOptions{Whiteouts: WhiteoutOverlay}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	mustDo(t, unix.Lstat(filepath.Join(upper, "gone"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout is mode %o rdev %d, want a 0/0 character device", st.Mode, st.Rdev)
	}
	for _, d := range []string{"d", "e"} {
		if v, err := getXattr(filepath.Join(upper, d), overlayOpaqueXattr); string(v) != "y" {
			t.Errorf("%s: opaque xattr %q, %v", d, v, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(upper, "d", opaqueMarker)); !os.IsNotExist(err) {
		t.Errorf("opaque marker written as a file: %v", err)
	}

	var out bytes.Buffer
	if err := WriteDir(&out, upper, WriteOptions{Whiteouts: WhiteoutOverlay}); err != nil {
		t.Fatal(err)
	}
	// Walk order: by the names on disk, "gone" after "e".
	want := []string{"d/", "d/.wh..wh..opq", "d/new", "e/", "e/.wh..wh..opq", ".wh.gone"}
	if got := tarNames(t, out.Bytes()); !slices.Equal(got, want) {
		t.Errorf("WriteDir = %q, want %q", got, want)
	}
	tr := tar.NewReader(bytes.NewReader(out.Bytes()))
	for hdr, err := tr.Next(); err == nil; hdr, err = tr.Next() {
		for k := range hdr.PAXRecords {
			if strings.Contains(k, "overlay") {
				t.Errorf("%s carries %s", hdr.Name, k)
			}
		}
	}

	again := t.TempDir()
	if _, err := Apply(again, bytes.NewReader(out.Bytes()), ApplyOptions{Whiteouts: WhiteoutOverlay}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, snapshot(t, upper), snapshot(t, again))
}

func TestWhiteoutDelete(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"gonedir/sub", "d/sub", "d/olddir"} {
		mustDo(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	for _, f := range []string{"keep", "gone", "gonedir/sub/x", "d/old", "d/sub/oldsub", "d/olddir/y"} {
		mustDo(t, os.WriteFile(filepath.Join(root, f), nil, 0o644))
	}
	layer := tarOf(t, file(".wh.gone", ""), file(".wh.gonedir", ""), file(".wh.never-existed", ""),
		file("nodir/.wh.x", ""), dir("d/"), file("d/new", "new"), file("d/sub/newsub", "n"),
		file("d/.wh..wh..opq", ""), file("d/late", "late"))
	if _, err := Apply(root, bytes.NewReader(layer), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	var got []string
	mustDo(t, filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		got = append(got, strings.TrimPrefix(p, root))
		return err
	}))
	want := []string{"", "/d", "/d/late", "/d/new", "/d/sub", "/d/sub/newsub", "/keep"}
	if !slices.Equal(got, want) {
		t.Errorf("tree after whiteouts = %q, want %q", got, want)
	}
}

func TestAUFSWhiteouts(t *testing.T) {
	root := t.TempDir()
	layer := tarOf(t, file(".wh..wh.plnk/123.456", "x"), file(".wh.gone", ""), dir("d/"), file("d/.wh..wh..opq", ""),
		hardlink("d/link", ".wh..wh.plnk/123.456"))
	if _, err := Apply(root, bytes.NewReader(layer), ApplyOptions{Whiteouts: WhiteoutAUFS}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".wh.gone", "d/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("aufs whiteout not kept: %v", err)
		}
	}
	for _, p := range []string{".wh..wh.plnk", "d/link"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s: aufs metadata extracted: %v", p, err)
		}
	}
	var out bytes.Buffer
	mustDo(t, os.MkdirAll(filepath.Join(root, ".wh..wh.aufs"), 0o755))
	mustDo(t, WriteDir(&out, root, WriteOptions{Whiteouts: WhiteoutAUFS}))
	if got, want := tarNames(t, out.Bytes()), []string{".wh.gone", "d/", "d/.wh..wh..opq"}; !slices.Equal(got, want) {
		t.Errorf("WriteDir = %q, want %q", got, want)
	}
}

func TestChanges(t *testing.T) {
	requireRoot(t)
	parent, layer := t.TempDir(), t.TempDir()
	makeTree(t, parent)
	mustDo(t, os.MkdirAll(filepath.Join(parent, "var/cache/deep"), 0o755))
	mustDo(t, os.WriteFile(filepath.Join(parent, "var/cache/deep/f"), []byte("f"), 0o644))
	setMtime(t, filepath.Join(parent, "var"), 1600000000, 0)
	var copyTar bytes.Buffer
	mustDo(t, WriteDir(&copyTar, parent, WriteOptions{}))
	copyOf := func(dir string) {
		_, err := Apply(dir, bytes.NewReader(copyTar.Bytes()), ApplyOptions{})
		mustDo(t, err)
	}
	copyOf(layer)
	if changes, err := Changes(parent, layer); err != nil || len(changes) != 0 {
		t.Fatalf("a copy differs from its original: %v %v", changes, err)
	}

	at := func(p string) string { return filepath.Join(layer, p) }
	keepMtime := func(p string, change func()) {
		var st unix.Stat_t
		mustDo(t, unix.Lstat(at(p), &st))
		change()
		setMtime(t, at(p), st.Mtim.Sec, st.Mtim.Nsec)
	}
	// Same size, same second, another nanosecond.
	var st unix.Stat_t
	mustDo(t, unix.Lstat(at("etc/passwd"), &st))
	mustDo(t, os.WriteFile(at("etc/passwd"), []byte("ROOT:x:0:0::/root:/bin/sh\n"), 0o644))
	setMtime(t, at("etc/passwd"), st.Mtim.Sec, st.Mtim.Nsec+1)
	keepMtime("home/user/notes", func() { mustDo(t, os.Lchown(at("home/user/notes"), 1000, 1000)) })
	keepMtime("bin/su", func() { mustDo(t, unix.Chmod(at("bin/su"), 0o755)) })
	keepMtime("srv", func() { mustDo(t, unix.Lsetxattr(at("srv"), "user.dir", []byte("y"), 0)) })
	keepMtime("usr/lib", func() {
		mustDo(t, os.Remove(at("usr/lib/abs")), os.Symlink("/etc/shadow", at("usr/lib/abs")))
	})
	keepMtime("usr/lib/abs", func() {})
	keepMtime("", func() { mustDo(t, os.RemoveAll(at("var"))) })
	mustDo(t, os.Mkdir(at("tmp/new"), 0o700), os.WriteFile(at("tmp/new/file"), []byte("hello"), 0o644))
	mustDo(t, os.Link(at("tmp/new/file"), at("tmp/new/link")))
	keepMtime("dev", func() { mustDo(t, os.Remove(at("dev/fifo")), os.Mkdir(at("dev/fifo"), 0o755)) })
	mustDo(t, os.WriteFile(at("dev/fifo/inside"), nil, 0o644))

	changes, err := Changes(parent, layer)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		got = append(got, c.Kind.String()+" "+c.Path)
	}
	// Directories holding a change are changed too, as docker diff has it;
	// their moved mtimes alone (keepMtime aside) change nothing.
	want := []string{
		"C /bin", "C /bin/su", "C /dev", "C /dev/fifo", "A /dev/fifo/inside", "C /etc", "C /etc/passwd",
		"C /home", "C /home/user", "C /home/user/notes", "C /srv", "C /tmp", "A /tmp/new", "A /tmp/new/file",
		"A /tmp/new/link", "C /usr", "C /usr/lib", "C /usr/lib/abs", "D /var",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Changes =\n%q\nwant\n%q", got, want)
	}
	// Changed: notes, su, passwd, tmp/new/file with its hard link once, and
	// the symlink usr/lib/abs, whose size is its target's length.
	if size, err := ChangesSize(layer, changes); err != nil || size != 4+2+int64(len("ROOT:x:0:0::/root:/bin/sh\n"))+5+int64(len("/etc/shadow")) {
		t.Errorf("ChangesSize = %d, %v", size, err)
	}

	// The tar of the changes turns a copy of the parent into the layer.
	var diff bytes.Buffer
	mustDo(t, WriteChanges(&diff, layer, changes))
	names := tarNames(t, diff.Bytes())
	if !slices.Contains(names, ".wh.var") || !slices.Contains(names, "usr/") {
		t.Errorf("WriteChanges entries: %q", names)
	}
	applied := t.TempDir()
	copyOf(applied)
	if _, err := Apply(applied, bytes.NewReader(diff.Bytes()), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	want2, got2 := snapshot(t, layer), snapshot(t, applied)
	// Parent directories come out of the tar with the layer's times, as
	// does the root, which the tar does not carry.
	delete(want2, "")
	delete(got2, "")
	compareTrees(t, want2, got2)
}

func TestApplyDrainsPadding(t *testing.T) {
	layer := append(tarOf(t, file("a", "a")), make([]byte, 9000)...)
	r := bytes.NewReader(layer)
	if _, err := Apply(t.TempDir(), r, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 0 {
		t.Errorf("Apply left %d bytes of the stream unread", r.Len())
	}
}

func TestApplyReplaces(t *testing.T) {
	root := t.TempDir()
	mustDo(t, os.MkdirAll(filepath.Join(root, "dir/keep"), 0o700))
	mustDo(t, os.MkdirAll(filepath.Join(root, "todir"), 0o700))
	mustDo(t, os.WriteFile(filepath.Join(root, "file"), []byte("old"), 0o644))
	mustDo(t, os.WriteFile(filepath.Join(root, "todir/x"), []byte("old"), 0o644))
	mustDo(t, os.Symlink("/etc/passwd", filepath.Join(root, "link")))
	layer := tarOf(t, dir("dir/"), file("file", "new"), file("todir", "now a file"), file("link", "not followed"))
	if _, err := Apply(root, bytes.NewReader(layer), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(root, "dir/keep"))
	if err != nil || !fi.IsDir() {
		t.Errorf("a directory over a directory lost its content: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(root, "dir")); fi.Mode().Perm() != 0o755 {
		t.Errorf("dir mode %v, want the tar's 0755", fi.Mode())
	}
	for p, want := range map[string]string{"file": "new", "todir": "now a file", "link": "not followed"} {
		if b, err := os.ReadFile(filepath.Join(root, p)); string(b) != want {
			t.Errorf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
}

// A "./" entry gives the root its metadata; a leading "/" is dropped.
func TestApplyRootEntry(t *testing.T) {
	root := t.TempDir()
	top := dir("./")
	top.hdr.Mode = 0o750
	top.hdr.ModTime = time.Unix(1500000000, 42)
	if _, err := Apply(root, bytes.NewReader(tarOf(t, top, file("/etc/hosts", "h"))), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(root)
	if err != nil || fi.Mode().Perm() != 0o750 || !fi.ModTime().Equal(top.hdr.ModTime) {
		t.Errorf("root: %v %v, want 0750 at %v (%v)", fi.Mode(), fi.ModTime(), top.hdr.ModTime, err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/hosts")); err != nil {
		t.Error(err)
	}
}

func TestDecompressStream(t *testing.T) {
	plain := tarOf(t, file("a", strings.Repeat("layer ", 1000)))
	for _, c := range []Compression{Uncompressed, Gzip, Zstd} {
		t.Run(c.String(), func(t *testing.T) {
			stream := compress(t, c, plain)
			r, got, err := DecompressStream(bytes.NewReader(stream))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if got != c {
				t.Errorf("detected %v, want %v", got, c)
			}
			b, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(b, plain) {
				t.Errorf("decompressed %d bytes, %v; want %d", len(b), err, len(plain))
			}
		})
	}
	t.Run("tiny", func(t *testing.T) {
		r, c, err := DecompressStream(strings.NewReader("a"))
		b, _ := io.ReadAll(r)
		if err != nil || c != Uncompressed || string(b) != "a" {
			t.Errorf("got %q %v %v", b, c, err)
		}
	})
}

// TestChangesWideTree compares a tree of many directories, which Changes
// walks several at a time: the list is the same whatever the order the
// directories were compared in, parents of deep changes included.
func TestChangesWideTree(t *testing.T) {
	parent, layer := t.TempDir(), t.TempDir()
	for i := range 64 {
		dir := filepath.Join(parent, fmt.Sprintf("d%02d/sub/leaf", i))
		mustDo(t, os.MkdirAll(dir, 0o755))
		mustDo(t, os.WriteFile(filepath.Join(dir, "f"), []byte("f"), 0o644))
	}
	var tree bytes.Buffer
	mustDo(t, WriteDir(&tree, parent, WriteOptions{}))
	_, err := Apply(layer, bytes.NewReader(tree.Bytes()), ApplyOptions{})
	mustDo(t, err)
	mustDo(t, os.WriteFile(filepath.Join(layer, "d07/sub/leaf/f"), []byte("changed"), 0o644))
	mustDo(t, os.RemoveAll(filepath.Join(layer, "d30/sub/leaf")))
	mustDo(t, os.WriteFile(filepath.Join(layer, "d63/sub/new"), nil, 0o644))
	want := []string{
		"C /d07", "C /d07/sub", "C /d07/sub/leaf", "C /d07/sub/leaf/f",
		"C /d30", "C /d30/sub", "D /d30/sub/leaf",
		"C /d63", "C /d63/sub", "A /d63/sub/new",
	}
	for range 5 {
		changes, err := Changes(parent, layer)
		mustDo(t, err)
		var got []string
		for _, c := range changes {
			got = append(got, c.Kind.String()+" "+c.Path)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("Changes =\n%q\nwant\n%q", got, want)
		}
	}
}
