package layer

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/driver"
	_ "github.com/strata-storage/strata/driver/overlay"
	_ "github.com/strata-storage/strata/driver/vfs"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/metadata"
)

// testStore is a layer store on a real driver, with image roots the test
// sets by hand.
type testStore struct {
	*Store
	mu    sync.Mutex
	roots []digest.Digest
}

func (ts *testStore) setRoots(roots ...digest.Digest) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.roots = roots
}

// openStore opens the layer store in root with driver name, as a fresh
// process would.
func openStore(t *testing.T, root, name string) *testStore {
	t.Helper()
	db, err := metadata.Open(filepath.Join(root, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := driver.New(root, name, nil)
	if errors.Is(err, errdefs.ErrNotSupported) {
		t.Skipf("driver %s: %v", name, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Cleanup() })
	ts := &testStore{}
	ts.Store, err = NewStore(root, db, d, func(*bolt.Tx) ([]digest.Digest, error) {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return slices.Clone(ts.roots), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// forEachDriver runs fn against every driver that works here: vfs always,
// overlay as root where the kernel and backing file system allow.
func forEachDriver(t *testing.T, fn func(t *testing.T, s *testStore)) {
	for _, name := range []string{"vfs", "overlay"} {
		t.Run(name, func(t *testing.T) {
			if name == "overlay" && os.Geteuid() != 0 {
				t.Skip("overlay mounts need root")
			}
			fn(t, openStore(t, t.TempDir(), name))
		})
	}
}

func newLease(t *testing.T, s *testStore) *Lease {
	t.Helper()
	l, err := s.NewLease()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Release() })
	return l
}

type entry struct {
	hdr  tar.Header
	data string
}

// makeTar builds a layer tar whose exact bytes matter: PAX records, sizes
// that need padding, and extra zero blocks after the end marker.
func makeTar(t *testing.T, entries []entry, trailingZeros int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 123456789)
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	buf.Write(make([]byte, trailingZeros))
	return buf.Bytes()
}

func dir(name string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

func file(name, data string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, data: data}
}

// richTar is a layer with a bit of everything tar-split must keep.
func richTar(t *testing.T) []byte {
	long := "usr/share/" + string(bytes.Repeat([]byte("long-name-"), 15)) + "file"
	pax := file("etc/pax", "with records")
	pax.hdr.Format = tar.FormatPAX
	pax.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.note": "kept", "comment": "odd header"}
	return makeTar(t, []entry{
		dir("etc/"),
		file("etc/one-byte", "x"),
		file("etc/block-and-one", string(bytes.Repeat([]byte("b"), 513))),
		file("etc/empty", ""),
		pax,
		dir("usr/"), dir("usr/share/"),
		file(long, "a name longer than 100 bytes"),
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/link", Linkname: "one-byte"}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "etc/hard", Linkname: "etc/one-byte"}},
	}, 3*512+100)
}

func gzipped(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstded(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// source serves blob, checked against the diff ID of the uncompressed tar.
func source(tarBytes, blob []byte) Source {
	return Source{
		DiffID: digest.FromBytes(tarBytes),
		Open:   func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(blob)), nil },
	}
}

func plain(tarBytes []byte) Source { return source(tarBytes, tarBytes) }

// driverLayers lists the driver's layers by reading its directory: what is
// on disk, whatever the metadata says.
func driverLayers(t *testing.T, s *testStore) []string {
	t.Helper()
	var dir string
	switch s.driver.String() {
	case "vfs":
		dir = filepath.Join(s.driverRoot(), "dir")
	default:
		dir = s.driverRoot()
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		if len(e.Name()) == 64 {
			ids = append(ids, e.Name())
		}
	}
	return ids
}

func readDirNames(t *testing.T, dir string) []string {
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

// assertEmpty checks that nothing is recorded and nothing is left on disk.
func assertEmpty(t *testing.T, s *testStore) {
	t.Helper()
	if layers, err := s.List(); err != nil || len(layers) != 0 {
		t.Errorf("layers recorded: %v, %v", layers, err)
	}
	if ids := driverLayers(t, s); len(ids) != 0 {
		t.Errorf("driver layers left: %v", ids)
	}
	if names := readDirNames(t, s.tmpDir()); len(names) != 0 {
		t.Errorf("tar-split temp files left: %v", names)
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketTrash); b != nil && b.Stats().KeyN > 0 {
			t.Errorf("%d trash entries left", b.Stats().KeyN)
		}
		if leases := tx.Bucket(bucketLeases); leases != nil {
			return leases.ForEachBucket(func(k []byte) error {
				if n := leases.Bucket(k).Bucket(keyPending).Stats().KeyN; n > 0 {
					t.Errorf("lease %s: %d pending driver layers", k, n)
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func tarStreamBytes(t *testing.T, s *testStore, chainID digest.Digest) []byte {
	t.Helper()
	rc, err := s.TarStream(chainID)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	return b
}
