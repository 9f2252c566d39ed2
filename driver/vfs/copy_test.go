package vfs

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCopyTreePreservesEverything copies a tree holding every kind of
// entry with each content copy method and compares all metadata.
func TestCopyTreePreservesEverything(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("chown and mknod need root")
	}
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src)
	methods := map[string]copyMethod{"reflink": copyReflink, "copy_file_range": copyRange, "read-write": copyReadWrite}
	for name, method := range methods {
		t.Run(name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			m := method
			if err := copyTree(src, dst, &m); err != nil {
				t.Fatal(err)
			}
			want, got := describe(t, src), describe(t, dst)
			for p, w := range want {
				if got[p] != w {
					t.Errorf("%s:\n got %s\nwant %s", p, got[p], w)
				}
			}
			if len(got) != len(want) {
				t.Errorf("copied %d entries, want %d", len(got), len(want))
			}
			var a, b unix.Stat_t
			unix.Lstat(filepath.Join(dst, "d/file"), &a)
			unix.Lstat(filepath.Join(dst, "link"), &b)
			if a.Ino != b.Ino {
				t.Error("hard link copied as two files")
			}
		})
	}
}

func makeTree(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "d"), 0o755))
	f := filepath.Join(root, "d/file")
	must(os.WriteFile(f, []byte(strings.Repeat("content", 1000)), 0o644))
	must(os.Lchown(f, 1, 2))
	must(os.Chmod(f, 0o4755))
	must(unix.Lsetxattr(f, "user.note", []byte("hi"), 0))
	// A capability set: cap_net_bind_service, version 2.
	capv2 := []byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	must(unix.Lsetxattr(f, "security.capability", capv2, 0))
	must(os.Link(f, filepath.Join(root, "link")))
	must(os.Symlink("d/file", filepath.Join(root, "sym")))
	must(unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(filepath.Join(root, "fifo"), 0o600))
	must(os.Mkdir(filepath.Join(root, "sticky"), 0o1777))
	must(os.Chmod(filepath.Join(root, "sticky"), 0o1777))
	must(os.WriteFile(filepath.Join(root, "empty"), nil, 0o600))
	ts := []unix.Timespec{unix.NsecToTimespec(time.Date(2021, 1, 1, 0, 0, 0, 123456789, time.UTC).UnixNano())}
	ts = append(ts, ts[0])
	for _, p := range []string{"sym", "d/file", "fifo", "d", "sticky", "."} {
		must(unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(root, p), ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

func describe(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o owner=%d:%d size=%d rdev=%d mtime=%d nlink=%d",
			st.Mode, st.Uid, st.Gid, st.Size, st.Rdev, st.Mtim.Nano(), st.Nlink)
		names, err := listXattrs(p)
		if err != nil {
			return err
		}
		for _, n := range names {
			v, err := getXattr(p, n)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %s=%q", n, v)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" content=%d:%.20s", len(b), b)
		}
		out[strings.TrimPrefix(p, root)] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
