package unionfs

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// tree creates files under dir: a name ending in "/" is a directory, a
// value starting with "->" a symlink, anything else a file with that body.
func tree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		body := files[name]
		var err error
		switch {
		case name[len(name)-1] == '/':
			err = os.MkdirAll(p, 0o755)
		case len(body) > 2 && body[:2] == "->":
			err = os.Symlink(body[2:], p)
		default:
			err = os.WriteFile(p, []byte(body), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// mount mounts branches (top first) at a new directory, unmounted at the
// end of the test.
func mount(t *testing.T, writable bool, branches ...string) string {
	t.Helper()
	needRoot(t)
	mnt := t.TempDir()
	u, err := Mount(mnt, Options{Branches: branches, Writable: writable, Passthrough: true, Name: "unionfs-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := u.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		u.Wait()
	})
	return mnt
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the tests mount FUSE directly, as root (TestUserNamespace covers a user that is not)")
	}
}

// branches makes n empty branch directories.
func branches(t *testing.T, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = t.TempDir()
	}
	return out
}

func list(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func absent(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: want absent, lstat says %v", p, err)
	}
}

func TestMergeWhiteoutsOpaque(t *testing.T) {
	b := branches(t, 3)
	tree(t, b[2], map[string]string{"a": "a2", "gone": "x", "d/x": "x", "d/y": "y", "o/old": "old", "l": "->a"})
	tree(t, b[1], map[string]string{"a": "a1", ".wh.gone": "", "d/.wh.x": "", "d/z": "z", "o/.wh..wh..opq": "", "o/new": "new"})
	tree(t, b[0], map[string]string{"top": "t"})
	mnt := mount(t, false, b...)
	if got := list(t, mnt); !slices.Equal(got, []string{"a", "d", "l", "o", "top"}) {
		t.Errorf("root lists %q", got)
	}
	if got := list(t, mnt+"/d"); !slices.Equal(got, []string{"y", "z"}) {
		t.Errorf("d lists %q", got)
	}
	if got := list(t, mnt+"/o"); !slices.Equal(got, []string{"new"}) {
		t.Errorf("opaque o lists %q", got)
	}
	if got := read(t, mnt+"/l"); got != "a1" {
		t.Errorf("l -> a reads %q, want the upper a1", got)
	}
	absent(t, mnt+"/gone")
	absent(t, mnt+"/.wh.gone")
	if err := os.WriteFile(mnt+"/new", nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to a read-only union: %v, want EROFS", err)
	}
}

func TestCopyUpKeepsMetadataAndLowerBranch(t *testing.T) {
	b := branches(t, 2)
	tree(t, b[1], map[string]string{"dir/f": "lower"})
	f := b[1] + "/dir/f"
	if err := errors.Join(os.Chown(f, 7, 8), os.Chmod(f, 0o4750), unix.Lsetxattr(f, "user.k", []byte("v"), 0)); err != nil {
		t.Fatal(err)
	}
	var before syscall.Stat_t
	mnt := mount(t, true, b...)
	if err := syscall.Lstat(mnt+"/dir/f", &before); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(mnt+"/dir/f", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteString("+more"); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	if got := read(t, mnt+"/dir/f"); got != "lower+more" {
		t.Errorf("after append: %q", got)
	}
	if got := read(t, f); got != "lower" {
		t.Errorf("lower branch changed: %q", got)
	}
	var after syscall.Stat_t
	if err := syscall.Lstat(b[0]+"/dir/f", &after); err != nil {
		t.Fatalf("no copy in the upper branch: %v", err)
	}
	if after.Mode != before.Mode || after.Uid != 7 || after.Gid != 8 {
		t.Errorf("copy: mode %o owner %d:%d, want %o 7:8", after.Mode, after.Uid, after.Gid, before.Mode)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(mnt+"/dir/f", "user.k", buf); err != nil || string(buf[:n]) != "v" {
		t.Errorf("xattr after copy-up: %q, %v", buf[:n], err)
	}
	var now syscall.Stat_t
	if err := syscall.Lstat(mnt+"/dir/f", &now); err != nil || now.Ino != before.Ino {
		t.Errorf("inode number changed by the copy-up: %d, was %d (%v)", now.Ino, before.Ino, err)
	}
	if left := list(t, b[0]+"/"+workDir); len(left) != 0 {
		t.Errorf("work dir holds %q", left)
	}
}

func TestRemoveAndRecreate(t *testing.T) {
	b := branches(t, 2)
	tree(t, b[1], map[string]string{"f": "f", "d/a": "a", "d/sub/b": "b"})
	mnt := mount(t, true, b...)
	if err := errors.Join(os.Remove(mnt+"/f"), os.RemoveAll(mnt+"/d")); err != nil {
		t.Fatal(err)
	}
	absent(t, mnt+"/f")
	absent(t, mnt+"/d")
	for _, wh := range []string{".wh.f", ".wh.d"} {
		if _, err := os.Lstat(b[0] + "/" + wh); err != nil {
			t.Errorf("whiteout %s: %v", wh, err)
		}
	}
	if err := os.Mkdir(mnt+"/d", 0o700); err != nil {
		t.Fatal(err)
	}
	if got := list(t, mnt+"/d"); len(got) != 0 {
		t.Errorf("recreated d shows %q of the lower one", got)
	}
	if _, err := os.Lstat(b[0] + "/d/" + OpaqueMarker); err != nil {
		t.Errorf("recreated d is not opaque: %v", err)
	}
	if err := os.WriteFile(mnt+"/f", []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(b[0] + "/.wh.f"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("whiteout of f left after f was created again: %v", err)
	}
	if err := os.WriteFile(mnt+"/.wh.x", nil, 0o600); !errors.Is(err, syscall.EPERM) {
		t.Errorf("create .wh.x: %v, want EPERM", err)
	}
}

func TestRenameDirFromLowerBranch(t *testing.T) {
	b := branches(t, 3)
	tree(t, b[2], map[string]string{"d/a": "a", "d/sub/c": "c"})
	tree(t, b[1], map[string]string{"d/b": "b", "t/x": "x"})
	mnt := mount(t, true, b...)
	var before syscall.Stat_t
	if err := syscall.Lstat(mnt+"/d/sub/c", &before); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(mnt+"/d", mnt+"/moved"); err != nil {
		t.Fatalf("rename of a lower directory: %v", err)
	}
	absent(t, mnt+"/d")
	if got := list(t, mnt+"/moved"); !slices.Equal(got, []string{"a", "b", "sub"}) {
		t.Errorf("moved lists %q", got)
	}
	if got := read(t, mnt+"/moved/sub/c"); got != "c" {
		t.Errorf("moved/sub/c reads %q", got)
	}
	var after syscall.Stat_t
	if err := syscall.Lstat(mnt+"/moved/sub/c", &after); err != nil || after.Ino != before.Ino {
		t.Errorf("inode of sub/c: %d, was %d (%v)", after.Ino, before.Ino, err)
	}
	// Over an empty directory that lower branches have.
	if err := os.Remove(mnt + "/t/x"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Rename(mnt+"/moved", mnt+"/t"); err != nil { // os.Rename refuses an existing directory
		t.Fatal(err)
	}
	if got := list(t, mnt+"/t"); !slices.Equal(got, []string{"a", "b", "sub"}) {
		t.Errorf("t lists %q", got)
	}
	// A file across directories.
	if err := os.Rename(mnt+"/t/a", mnt+"/a2"); err != nil {
		t.Fatal(err)
	}
	if got := read(t, mnt+"/a2"); got != "a" {
		t.Errorf("a2 reads %q", got)
	}
	absent(t, mnt+"/t/a")
}

func TestSpecialFilesAndAttributes(t *testing.T) {
	b := branches(t, 2)
	tree(t, b[1], map[string]string{"f": "0123456789", "g": "g"})
	mnt := mount(t, true, b...)
	checks := []struct {
		what string
		err  error
	}{
		{"link", os.Link(mnt+"/g", mnt+"/g2")},
		{"symlink", os.Symlink("f", mnt+"/s")},
		{"mkfifo", syscall.Mkfifo(mnt+"/fifo", 0o600)},
		{"mknod", syscall.Mknod(mnt+"/null", syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))},
		{"chmod", os.Chmod(mnt+"/f", 0o600)},
		{"chown", os.Lchown(mnt+"/f", 5, 6)},
		{"truncate", os.Truncate(mnt+"/f", 4)},
		{"setxattr", unix.Lsetxattr(mnt+"/g", "user.a", []byte("1"), 0)},
		{"removexattr", unix.Lremovexattr(mnt+"/g", "user.a")},
	}
	for _, c := range checks {
		if c.err != nil {
			t.Errorf("%s: %v", c.what, c.err)
		}
	}
	var f, g, g2 syscall.Stat_t
	if err := errors.Join(syscall.Lstat(mnt+"/f", &f), syscall.Lstat(mnt+"/g", &g), syscall.Lstat(mnt+"/g2", &g2)); err != nil {
		t.Fatal(err)
	}
	if f.Mode != syscall.S_IFREG|0o600 || f.Uid != 5 || f.Gid != 6 || f.Size != 4 {
		t.Errorf("f: mode %o owner %d:%d size %d", f.Mode, f.Uid, f.Gid, f.Size)
	}
	if g.Ino != g2.Ino || g2.Nlink != 2 {
		t.Errorf("hard link: inodes %d and %d, nlink %d", g.Ino, g2.Ino, g2.Nlink)
	}
	if got := read(t, mnt+"/s"); got != "0123" {
		t.Errorf("s -> f reads %q", got)
	}
	var null syscall.Stat_t
	if err := syscall.Lstat(mnt+"/null", &null); err != nil || null.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("device node: rdev %d, %v", null.Rdev, err)
	}
	fh, err := os.OpenFile(mnt+"/g", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := unix.Fallocate(int(fh.Fd()), 0, 0, 4096); err != nil {
		t.Errorf("fallocate: %v", err)
	}
	m, err := unix.Mmap(int(fh.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	copy(m, "G")
	if err := errors.Join(unix.Msync(m, unix.MS_SYNC), unix.Munmap(m)); err != nil {
		t.Fatal(err)
	}
	if got := read(t, mnt+"/g2"); !bytes.HasPrefix([]byte(got), []byte("G")) || len(got) != 4096 {
		t.Errorf("g2 after a write through mmap of g: %q...", got[:min(len(got), 4)])
	}
	var sf syscall.Statfs_t
	if err := syscall.Statfs(mnt, &sf); err != nil || sf.Blocks == 0 {
		t.Errorf("statfs: %+v, %v", sf, err)
	}
}

func TestStackWithoutMount(t *testing.T) {
	b := branches(t, 2)
	tree(t, b[1], map[string]string{"a": "a", "d/x": "x", "d/y": "y"})
	tree(t, b[0], map[string]string{".wh.a": "", "d/.wh.x": "", "d/z": "z"})
	s := Stack{Branches: b}
	if p, err := s.Lookup("/a"); err != nil || p != "" {
		t.Errorf("Lookup /a: %q, %v; want none", p, err)
	}
	if p, err := s.Lookup("/d/y"); err != nil || p != b[1]+"/d/y" {
		t.Errorf("Lookup /d/y: %q, %v", p, err)
	}
	if names, err := s.Names("/d"); err != nil || !slices.Equal(names, []string{"y", "z"}) {
		t.Errorf("Names /d: %q, %v", names, err)
	}
}

// TestPassthrough reads a lower file and writes an upper one: with
// passthrough the kernel does both on the branch files, and no read reaches
// the server. A file open on its lower copy cannot be opened on its new
// upper copy until it is closed (the kernel ties a passthrough inode to one
// backing file).
func TestPassthrough(t *testing.T) {
	b := branches(t, 2)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	if err := os.WriteFile(b[1]+"/big", big, 0o644); err != nil {
		t.Fatal(err)
	}
	needRoot(t)
	mnt := t.TempDir()
	u, err := Mount(mnt, Options{Branches: b, Writable: true, Passthrough: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Unmount(); u.Wait() })
	if !u.Passthrough() {
		t.Skip("the kernel offers no FUSE passthrough")
	}
	got, err := os.ReadFile(mnt + "/big")
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	if n := u.served.Load(); n != 0 {
		t.Errorf("%d reads went through the server", n)
	}
	r, err := os.Open(mnt + "/big")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.OpenFile(mnt+"/big", os.O_WRONLY, 0); !errors.Is(err, syscall.ETXTBSY) {
		t.Errorf("open for writing while open on the lower copy: %v, want ETXTBSY", err)
	}
	// It waited for the lower copy's files before the copy-up, which
	// takes the union's lock: the wait holds up no other request.
	if exists(b[0] + "/big") {
		t.Errorf("the refused open copied the file up")
	}
	r.Close()
	if err := os.WriteFile(mnt+"/big", []byte("small"), 0o644); err != nil {
		t.Fatalf("write once the lower copy is closed: %v", err)
	}
	if got := read(t, mnt+"/big"); got != "small" {
		t.Errorf("after the write: %q", got)
	}
}

// TestWithoutPassthrough serves reads itself when passthrough is off.
func TestWithoutPassthrough(t *testing.T) {
	b := branches(t, 2)
	if err := os.WriteFile(b[1]+"/f", []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	needRoot(t)
	mnt := t.TempDir()
	u, err := Mount(mnt, Options{Branches: b, Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Unmount(); u.Wait() })
	if got := read(t, mnt+"/f"); got != "lower" || u.served.Load() == 0 {
		t.Errorf("read %q with %d reads served, want the content through the server", got, u.served.Load())
	}
	if err := os.WriteFile(mnt+"/f", []byte("upper"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := read(t, b[0]+"/f"); got != "upper" {
		t.Errorf("upper copy holds %q", got)
	}
}

// TestSetattrKeepsInode checks that a change of attributes leaves the
// union's inode number: the kernel takes the number in a SETATTR reply as
// the inode's, and serves the cached attributes to the next stat.
func TestSetattrKeepsInode(t *testing.T) {
	b := branches(t, 2)
	tree(t, b[1], map[string]string{"lower": "x"})
	mnt := mount(t, true, b...)
	if err := os.WriteFile(mnt+"/new", []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"lower", "new"} {
		p := mnt + "/" + name
		var before, after syscall.Stat_t
		if err := syscall.Lstat(p, &before); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Lstat(p, &after); err != nil {
			t.Fatal(err)
		}
		if after.Ino != before.Ino || after.Mode&0o777 != 0o600 {
			t.Errorf("%s after chmod: inode %d mode %o, want inode %d mode 600", name, after.Ino, after.Mode&0o777, before.Ino)
		}
	}
}
