package layer

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestRegisterDiff commits a container-like layer: the new layer's tar is
// the diff of the read-write layer against its init layer, byte for byte,
// and the new layer holds that diff: overlay copies it in one pass
// (driver.DiffCopier), vfs extracts its tar.
func TestRegisterDiff(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		lease := newLease(t, s)
		base, err := s.RegisterChain(t.Context(), lease, "", []Source{plain(richTar(t))})
		if err != nil {
			t.Fatal(err)
		}
		d := s.driver
		if err := d.Create("init", base[0].CacheID, nil); err != nil {
			t.Fatal(err)
		}
		if err := d.CreateReadWrite("rw", "init", nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Remove("rw"); d.Remove("init") })
		root, err := d.Get("rw", "")
		if err != nil {
			t.Fatal(err)
		}
		for p, body := range map[string]string{"new/file": "new", "big": string(bytes.Repeat([]byte("b"), 1<<20))} {
			if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, p), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.Put("rw"); err != nil {
			t.Fatal(err)
		}
		want := readDiff(t, s, "rw", "init")

		l, err := s.RegisterDiff(t.Context(), lease, base[0].ChainID, "rw", "init")
		if err != nil {
			t.Fatal(err)
		}
		if l.DiffID != digest.FromBytes(want) || l.TarSize != int64(len(want)) || l.Parent != base[0].ChainID {
			t.Errorf("layer %+v, want diff ID %s of %d bytes on %s", l, digest.FromBytes(want), len(want), base[0].ChainID)
		}
		if got := tarStreamBytes(t, s, l.ChainID); !bytes.Equal(got, want) {
			t.Errorf("TarStream gave %d bytes, want the %d of the diff", len(got), len(want))
		}
		if got := readDiff(t, s, l.CacheID, base[0].CacheID); !bytes.Equal(got, want) {
			t.Errorf("the new layer's own diff is %d bytes, want the %d of the diff it copied", len(got), len(want))
		}
	})
}

func readDiff(t *testing.T, s *testStore, id, parent string) []byte {
	t.Helper()
	rc, err := s.driver.Diff(id, parent)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
