package container_test

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/store"
)

// TestInitLayerCache checks that the init content found in an image is
// kept for its next containers, dated anew each time, made again when its
// file is damaged, and dropped once the image's layers are gone.
func TestInitLayerCache(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		etc := dir("etc", 0o700)
		etc.Uid = 5
		addImage(t, s, "distro", "sh", layerTar(t, etc, reg("etc/hosts")))
		first := create(t, s, "distro", "")
		cached := filepath.Join(s.Root(), "containers", "init", first.Top.Encoded()+".tar")
		if _, err := os.Stat(cached); err != nil {
			t.Fatalf("no init tar cached: %v", err)
		}
		// What a cached tar says is what the next init layer gets, with
		// its own dates: date the cached entries long ago.
		redate(t, cached, epoch)
		removeAll := func() {
			t.Helper()
			cs, err := s.Containers().List()
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cs {
				if err := s.RemoveContainer(c, true); err != nil {
					t.Fatal(err)
				}
			}
		}
		check := func(what string) {
			t.Helper()
			removeAll() // the init layer goes with the image's last container
			c := create(t, s, "distro", "")
			root := get(t, s, c.InitID())
			var st unix.Stat_t
			if err := unix.Lstat(root+"/etc", &st); err != nil || st.Mode&0o7777 != 0o700 || st.Uid != 5 {
				t.Errorf("%s: /etc mode %o owner %d, %v; want the image's 0700 owner 5", what, st.Mode&0o7777, st.Uid, err)
			}
			if err := unix.Lstat(root+"/etc/hostname", &st); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if mtime := time.Unix(st.Mtim.Unix()); mtime.Before(time.Now().Add(-time.Hour)) {
				t.Errorf("%s: /etc/hostname dated %v, not at its creation", what, mtime)
			}
		}
		check("from the cache")
		if err := os.WriteFile(cached, []byte("not a tar"), 0o600); err != nil {
			t.Fatal(err)
		}
		check("with a damaged cache")
		if data, err := os.ReadFile(cached); err != nil || len(data) < 1024 {
			t.Errorf("the damaged cache was not made again: %d bytes, %v", len(data), err)
		}

		removeAll()
		if _, err := s.RemoveImage("distro", store.RemoveImageOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := s.Containers().Recover(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(cached); !os.IsNotExist(err) {
			t.Errorf("the init tar of a removed image is left: %v", err)
		}
	})
}

// redate rewrites the tar at p with every entry modified at mtime.
func redate(t *testing.T, p string, mtime time.Time) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(data)), tar.NewWriter(&buf)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hdr.ModTime, hdr.PAXRecords, hdr.Format = mtime, nil, tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}
