package container_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/store"
)

// testDriver is a driver every container case runs on, with the way to make
// a store root it can work in (btrfs needs a btrfs file system, say).
type testDriver struct {
	name string
	root func(t *testing.T) string
}

// drivers are the drivers every container case runs on; a driver that needs
// more than a temporary directory appends itself from its own file's init.
var drivers = []testDriver{
	{"vfs", func(t *testing.T) string { return t.TempDir() }},
	{"overlay", func(t *testing.T) string { return t.TempDir() }},
}

// forEachDriver runs test as a subtest per driver, each on a fresh store.
func forEachDriver(t *testing.T, test func(t *testing.T, s *store.Store)) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			test(t, openStore(t, d.root(t), d.name))
		})
	}
}

// openStore opens the store at root on driver name, as a new process would.
func openStore(t *testing.T, root, name string) *store.Store {
	t.Helper()
	s, err := store.Open(store.Options{Root: root, Driver: name})
	if errors.Is(err, errdefs.ErrNotSupported) {
		t.Skipf("driver %s: %v", name, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// epoch is the mtime of image entries: far from the test's own writes.
var epoch = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

// layerTar returns a layer tar of hdrs; a regular file's content is its name.
func layerTar(t *testing.T, hdrs ...tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		body := ""
		if h.Typeflag == tar.TypeReg {
			body = h.Name
			h.Size = int64(len(body))
		}
		if h.ModTime.IsZero() {
			h.ModTime = epoch
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func reg(name string) tar.Header {
	return tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}
}

func dir(name string, mode int64) tar.Header {
	return tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}
}

// addImage registers layers (base first) and creates an image of them
// tagged ref, as a loader does; cmd is its config's Cmd.
func addImage(t *testing.T, s *store.Store, ref, cmd string, layers ...[]byte) digest.Digest {
	t.Helper()
	lease, err := s.Layers().NewLease()
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release()
	var srcs []layer.Source
	var quoted []string
	for _, b := range layers {
		srcs = append(srcs, layer.Source{DiffID: digest.FromBytes(b), Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}})
		quoted = append(quoted, fmt.Sprintf("%q", digest.FromBytes(b)))
	}
	if _, err := s.Layers().RegisterChain(t.Context(), lease, "", srcs); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":[%q]},"rootfs":{"type":"layers","diff_ids":[%s]}}`,
		cmd, strings.Join(quoted, ","))
	img, err := s.CreateImage([]byte(config), ref)
	if err != nil {
		t.Fatal(err)
	}
	return img.ID
}

// smallImage is app:1, two layers with a few files.
func smallImage(t *testing.T, s *store.Store) digest.Digest {
	t.Helper()
	return addImage(t, s, "app:1", "/bin/app",
		layerTar(t, dir("etc", 0o755), reg("etc/passwd"), dir("bin", 0o755), reg("bin/app")),
		layerTar(t, reg("etc/app.conf")))
}
