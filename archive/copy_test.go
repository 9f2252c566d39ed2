package archive

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCopyDir checks that CopyDir writes the tar WriteDir writes and makes
// the tree Apply of that tar makes, whiteouts and opaque directories of an
// overlay upper directory included.
func TestCopyDir(t *testing.T) {
	requireRoot(t)
	for _, format := range []WhiteoutFormat{WhiteoutAUFS, WhiteoutOverlay} {
		src := t.TempDir()
		content := makeTree(t, src)
		if format == WhiteoutOverlay {
			mustDo(t, unix.Mknod(filepath.Join(src, "etc/gone"), unix.S_IFCHR, 0),
				os.Mkdir(filepath.Join(src, "opaque"), 0o755),
				unix.Lsetxattr(filepath.Join(src, "opaque"), overlayOpaqueXattr, []byte("y"), 0),
				os.WriteFile(filepath.Join(src, "opaque/kept"), []byte("kept"), 0o644))
			content += int64(len("kept"))
		}
		wopts, aopts := WriteOptions{Whiteouts: format}, ApplyOptions{Whiteouts: format}

		var want bytes.Buffer
		if err := WriteDir(&want, src, wopts); err != nil {
			t.Fatal(err)
		}
		applied := t.TempDir()
		if _, err := Apply(applied, bytes.NewReader(want.Bytes()), aopts); err != nil {
			t.Fatal(err)
		}

		var got entryBuffer
		copied := t.TempDir()
		n, err := CopyDir(&got, src, copied, wopts, aopts)
		if err != nil {
			t.Fatal(err)
		}
		if n != content {
			t.Errorf("format %d: CopyDir wrote %d bytes of content, want %d", format, n, content)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Errorf("format %d: CopyDir's tar differs from WriteDir's: %q vs %q", format, tarNames(t, got.Bytes()), tarNames(t, want.Bytes()))
		}
		// Each entry is told at the offset where its content starts.
		tr := tar.NewReader(bytes.NewReader(want.Bytes()))
		for i := 0; ; i++ {
			hdr, err := tr.Next()
			if err == io.EOF {
				if i != len(got.entries) {
					t.Errorf("format %d: %d entries told, the tar has %d", format, len(got.entries), i)
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if i >= len(got.entries) {
				t.Fatalf("format %d: entry %q not told", format, hdr.Name)
			}
			e := got.entries[i]
			content, _ := io.ReadAll(tr)
			if e.name != hdr.Name || e.size != hdr.Size || !bytes.Equal(got.Bytes()[e.offset:e.offset+e.size], content) {
				t.Errorf("format %d: entry %d told as %q (%d bytes at %d), want %q (%d bytes)", format, i, e.name, e.size, e.offset, hdr.Name, hdr.Size)
			}
		}
		compareTrees(t, snapshot(t, applied), snapshot(t, copied))
		if format == WhiteoutOverlay {
			compareTrees(t, snapshot(t, src), snapshot(t, copied))
		}
	}
}

// TestCopyDirStopsOnWriteError checks that a failing tar writer stops the
// copy with its error.
func TestCopyDirStopsOnWriteError(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	makeTree(t, src)
	if _, err := CopyDir(failingWriter{}, src, t.TempDir(), WriteOptions{}, ApplyOptions{}); err == nil {
		t.Fatal("CopyDir succeeded with a failing writer")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, os.ErrClosed }
func (failingWriter) Entry(string, int64) error { return nil }

// entryBuffer keeps the tar written to it and the entries it is told of.
type entryBuffer struct {
	bytes.Buffer
	entries []toldEntry
}

type toldEntry struct {
	name         string
	size, offset int64
}

func (b *entryBuffer) Entry(name string, size int64) error {
	b.entries = append(b.entries, toldEntry{name, size, int64(b.Len())})
	return nil
}
