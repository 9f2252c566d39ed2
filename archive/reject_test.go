package archive

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
)

// sandbox is a target directory next to an outside one holding a sentinel
// file, to check that nothing is written outside the target.
type sandbox struct {
	root, outside string
}

const sentinel = "sentinel content"

func newSandbox(t testing.TB) sandbox {
	t.Helper()
	base := t.TempDir()
	s := sandbox{root: filepath.Join(base, "root"), outside: filepath.Join(base, "outside")}
	mustDo(t, os.Mkdir(s.root, 0o755), os.Mkdir(s.outside, 0o755))
	mustDo(t, os.WriteFile(filepath.Join(s.outside, "sentinel"), []byte(sentinel), 0o644))
	return s
}

// check fails t if anything outside the root changed.
func (s sandbox) check(t testing.TB) {
	t.Helper()
	for _, d := range []string{filepath.Dir(s.root), s.outside} {
		names, err := readNames(d)
		if err != nil || len(names) != 2 && d != s.outside || len(names) != 1 && d == s.outside {
			t.Fatalf("%s holds %q (%v)", d, names, err)
		}
	}
	var st unix.Stat_t
	mustDo(t, unix.Lstat(filepath.Join(s.outside, "sentinel"), &st))
	b, err := os.ReadFile(filepath.Join(s.outside, "sentinel"))
	if err != nil || string(b) != sentinel || st.Nlink != 1 || st.Mode != unix.S_IFREG|0o644 {
		t.Fatalf("sentinel changed: %q nlink %d mode %o (%v)", b, st.Nlink, st.Mode, err)
	}
}

func TestApplyRejects(t *testing.T) {
	escape := symlink("escape", "../outside")
	tests := []struct {
		name    string
		format  WhiteoutFormat
		entries []entry
		setup   func(root string)
	}{
		{name: "dotdot", entries: []entry{file("../outside/evil", "x")}},
		{name: "dotdot-sentinel", entries: []entry{file("../outside/sentinel", "x")}},
		{name: "dotdot-nested", entries: []entry{dir("a/"), file("a/../../outside/evil", "x")}},
		{name: "dotdot-absolute", entries: []entry{file("/../outside/evil", "x")}},
		{name: "symlink-parent", entries: []entry{escape, file("escape/evil", "x")}},
		{name: "symlink-parent-sentinel", entries: []entry{escape, file("escape/sentinel", "x")}},
		{name: "symlink-chain", entries: []entry{dir("a/"), symlink("a/up", ".."), symlink("b", "a/up/.."), file("b/outside/evil", "x")}},
		{name: "symlink-absolute-dotdot", entries: []entry{symlink("up", "/../.."), file("up/outside/evil", "x")}},
		{name: "symlink-preexisting", setup: func(root string) {
			mustDo(t, os.Symlink("../outside", filepath.Join(root, "old")))
		}, entries: []entry{file("old/evil", "x")}},
		{name: "symlink-loop", entries: []entry{symlink("a", "b"), symlink("b", "a"), file("a/x", "x")}},
		{name: "file-as-parent", entries: []entry{file("f", "x"), file("f/x", "x")}},
		{name: "hardlink-dotdot", entries: []entry{hardlink("evil", "../outside/sentinel")}},
		{name: "hardlink-through-symlink", entries: []entry{escape, hardlink("evil", "escape/sentinel")}},
		{name: "hardlink-not-in-layer", setup: func(root string) {
			mustDo(t, os.WriteFile(filepath.Join(root, "old"), nil, 0o644))
		}, entries: []entry{hardlink("evil", "old")}},
		{name: "hardlink-to-dir", entries: []entry{dir("d/"), hardlink("evil", "d")}},
		{name: "hardlink-forward", entries: []entry{hardlink("evil", "later"), file("later", "x")}},
		{name: "whiteout-dotdot", entries: []entry{file("../outside/.wh.sentinel", "")}},
		{name: "whiteout-through-symlink", entries: []entry{escape, file("escape/.wh.sentinel", "")}},
		{name: "whiteout-through-symlink-overlay", format: WhiteoutOverlay, entries: []entry{escape, file("escape/.wh.sentinel", "")}},
		{name: "opaque-through-symlink", entries: []entry{escape, file("escape/.wh..wh..opq", "")}},
		{name: "whiteout-dotdot-name", entries: []entry{file(".wh..", "")}},
		{name: "whiteout-of-own-entry", entries: []entry{file("a", "x"), file(".wh.a", "")}},
		{name: "whiteout-of-own-dir", entries: []entry{file("d/a", "x"), file(".wh.d", "")}},
		{name: "duplicate-file", entries: []entry{file("a", "x"), file("a", "y")}},
		{name: "duplicate-symlink", entries: []entry{symlink("a", "x"), symlink("a", "y")}},
		{name: "file-over-own-dir", entries: []entry{dir("a/"), file("a", "y")}},
		{name: "file-over-written-parent", entries: []entry{file("a/b", "x"), file("a", "y")}},
		{name: "dir-over-own-file", entries: []entry{file("a", "x"), dir("a/")}},
		{name: "duplicate-via-symlink", entries: []entry{dir("usr/"), symlink("lib", "usr"), file("usr/x", "x"), file("lib/x", "y")}},
		{name: "entry-over-followed-symlink", entries: []entry{dir("usr/"), symlink("lib", "usr"), file("lib/x", "x"), file("lib", "y")}},
		{name: "root-not-dir", entries: []entry{file(".", "x")}},
		{name: "unknown-type", entries: []entry{{hdr: file("a", "").hdr}}, setup: nil},
	}
	tests[len(tests)-1].entries[0].hdr.Typeflag = 'Z'
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSandbox(t)
			if tt.setup != nil {
				tt.setup(s.root)
			}
			_, err := Apply(s.root, bytes.NewReader(tarOf(t, tt.entries...)), ApplyOptions{Whiteouts: tt.format})
			t.Log(err)
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("Apply = %v, want an error wrapping ErrInvalid", err)
			}
			s.check(t)
		})
	}
}

func TestApplyRejectsBadStreams(t *testing.T) {
	good := tarOf(t, file("a", string(make([]byte, 2000))), file("b", "b"))
	garbage := bytes.Repeat([]byte("not a tar "), 200)
	corruptHeader := append([]byte{}, good...)
	corruptHeader[512+2048+148] ^= 0x55 // checksum of the second header
	tests := map[string][]byte{
		"truncated-content": good[:1000],
		"truncated-header":  good[:2048+100],
		"no-end-marker":     good[:len(good)-1024],
		"empty":             nil,
		"garbage":           garbage,
		"corrupt-header":    corruptHeader,
		"zero-then-nonzero": append(append([]byte{}, good[:len(good)-1024]...), append(make([]byte, 512), garbage[:512]...)...),
	}
	for name, stream := range tests {
		t.Run(name, func(t *testing.T) {
			s := newSandbox(t)
			_, err := Apply(s.root, bytes.NewReader(stream), ApplyOptions{})
			t.Log(err)
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("Apply = %v, want an error wrapping ErrInvalid", err)
			}
			s.check(t)
		})
	}
}

// An absolute symlink is followed as in a chroot: writing through it stays
// inside the root.
func TestApplyAbsoluteSymlinkStaysInside(t *testing.T) {
	s := newSandbox(t)
	layer := tarOf(t, symlink("abs", s.outside), file("abs/sentinel", "inside"), symlink("etc", "/real/etc"), file("etc/hosts", "h"))
	if _, err := Apply(s.root, bytes.NewReader(layer), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	s.check(t)
	for p, want := range map[string]string{s.outside + "/sentinel": "inside", "real/etc/hosts": "h"} {
		if b, err := os.ReadFile(filepath.Join(s.root, p)); string(b) != want {
			t.Errorf("%s = %q (%v), want %q", p, b, err, want)
		}
	}
}
