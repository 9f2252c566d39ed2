package layer

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/strata-storage/strata/archive"
)

// teeRecorder keeps the bytes a tarRecorder is given.
type teeRecorder struct {
	*tarRecorder
	buf bytes.Buffer
}

func (t *teeRecorder) Write(p []byte) (int, error) {
	t.buf.Write(p)
	return t.tarRecorder.Write(p)
}

// TestTarRecorderPacksWhatTarSplitParses checks that the entries the
// recorder packs while a tar is written are those tar-split's parser packs
// from the same bytes: long and non-UTF-8 names, empty files, hard links,
// padding and the end-of-archive blocks.
func TestTarRecorderPacksWhatTarSplitParses(t *testing.T) {
	src := t.TempDir()
	long := strings.Repeat("d", 120)
	big := bytes.Repeat([]byte("0123456789"), 100_000)
	for p, body := range map[string][]byte{
		"a": []byte("a"), "empty": nil, "big": big, long + "/" + strings.Repeat("f", 150): []byte("long"),
		"bad-\xff-name": []byte("not UTF-8"), "dir/x": []byte(strings.Repeat("x", 513)),
	} {
		if err := os.MkdirAll(filepath.Join(src, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, p), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(src, "big"), filepath.Join(src, "big-link")); err != nil {
		t.Fatal(err)
	}

	var recorded bytes.Buffer
	rec := &teeRecorder{tarRecorder: newTarRecorder(storage.NewJSONPacker(&recorded))}
	if _, err := archive.CopyDir(rec, src, t.TempDir(), archive.WriteOptions{}, archive.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	tarBytes := rec.buf.Bytes()
	if rec.digester.Digest() != digest.FromBytes(tarBytes) || rec.size != int64(len(tarBytes)) {
		t.Errorf("recorder hashed %s (%d bytes), the tar is %s (%d bytes)", rec.digester.Digest(), rec.size, digest.FromBytes(tarBytes), len(tarBytes))
	}

	var parsed bytes.Buffer
	split, err := asm.NewInputTarStream(bytes.NewReader(tarBytes), storage.NewJSONPacker(&parsed), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, split); err != nil {
		t.Fatal(err)
	}
	got, want := unpackAll(t, recorded.Bytes()), unpackAll(t, parsed.Bytes())
	if !slices.EqualFunc(got, want, func(a, b storage.Entry) bool {
		return a.Type == b.Type && a.Name == b.Name && bytes.Equal(a.NameRaw, b.NameRaw) && a.Size == b.Size &&
			bytes.Equal(a.Payload, b.Payload) && a.Position == b.Position
	}) {
		t.Errorf("recorded %d entries, tar-split parses %d:\n got %+v\nwant %+v", len(got), len(want), got, want)
	}
}

func unpackAll(t *testing.T, packed []byte) []storage.Entry {
	t.Helper()
	u := storage.NewJSONUnpacker(bytes.NewReader(packed))
	var entries []storage.Entry
	for {
		e, err := u.Next()
		if err == io.EOF {
			return entries
		}
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, *e)
	}
}
