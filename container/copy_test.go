package container_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/store"
)

func TestStat(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		fsImage(t, s)
		c, _ := fsContainer(t, s)
		cs := s.Containers()
		st, err := cs.Stat(c, "/etc/passwd")
		if err != nil || st.Name != "passwd" || st.Size != int64(len("etc/passwd")) || !st.Mode.IsRegular() || st.LinkTarget != "" {
			t.Errorf("stat /etc/passwd: %+v, %v", st, err)
		}
		if st, err = cs.Stat(c, "etc/"); err != nil || st.Name != "etc" || !st.Mode.IsDir() {
			t.Errorf("stat etc/: %+v, %v", st, err)
		}
		if st, err = cs.Stat(c, "/etc/os-release"); err != nil || st.Mode&os.ModeSymlink == 0 || st.LinkTarget != "/usr/os-release" {
			t.Errorf("stat of a symlink: %+v, %v", st, err)
		}
		_, err = cs.Stat(c, "/nope")
		if want := "Could not find the file /nope in container " + c.Name; !errors.Is(err, errdefs.ErrNotFound) || errdefs.Message(err) != want {
			t.Errorf("stat /nope: %v, want ErrNotFound %q", err, want)
		}
		if _, err = cs.Stat(c, "/etc/passwd/"); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("stat of a file with a trailing slash: %v, want ErrInvalid", err)
		}
	})
}

// copyFrom returns the tar entries CopyFrom gives for p.
func copyFrom(t *testing.T, s *store.Store, c container.Container, p string) (map[string]tarEntry, []string, error) {
	t.Helper()
	rc, _, err := s.Containers().CopyFrom(c, p)
	if err != nil {
		return nil, nil, err
	}
	entries, names := readTar(t, rc)
	return entries, names, rc.Close()
}

func TestCopyFrom(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		fsImage(t, s)
		c, _ := fsContainer(t, s)
		for _, tc := range []struct {
			path  string
			names []string
		}{
			{"/etc/passwd", []string{"passwd"}},
			{"/data", []string{"data/", "data/old", "data/sub/", "data/sub/deep"}},
			{"/data/", []string{"data/", "data/old", "data/sub/", "data/sub/deep"}},
			{"/data/.", []string{"old", "sub/", "sub/deep"}},
			{"/etc/os-release", []string{"os-release"}},
		} {
			_, names, err := copyFrom(t, s, c, tc.path)
			if err != nil || !slices.Equal(names, tc.names) {
				t.Errorf("copy from %s: %q, %v; want %q", tc.path, names, err, tc.names)
			}
		}
		entries, _, _ := copyFrom(t, s, c, "/etc/os-release")
		if e := entries["os-release"]; e.Type != tar.TypeSymlink || e.Link != "../usr/os-release" {
			t.Errorf("a symlink is copied as %+v", e)
		}
		if _, _, err := copyFrom(t, s, c, "/etc/passwd/."); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("copy from a file's /.: %v, want ErrInvalid", err)
		}
		if _, _, err := copyFrom(t, s, c, "/nope"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("copy from a missing path: %v, want ErrNotFound", err)
		}
	})
}

func TestCopyRoundTrip(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		fsImage(t, s)
		c, root := fsContainer(t, s)
		rc, _, err := s.Containers().CopyFrom(c, "/data")
		if err != nil {
			t.Fatal(err)
		}
		err = s.Containers().CopyTo(c, "/var", rc, container.CopyToOptions{CopyUIDGID: true})
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		if got, want := readRoot(t, root+"/var/data"), readRoot(t, root+"/data"); !maps.Equal(got, want) {
			t.Errorf("copied tree\n got %v\nwant %v", got, want)
		}
	})
}

// tarOf returns a tar of hdrs, each regular file's content its name.
func tarOf(t *testing.T, hdrs ...tar.Header) io.Reader {
	return bytes.NewReader(layerTar(t, hdrs...))
}

func TestCopyTo(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		fsImage(t, s)
		c, root := fsContainer(t, s)
		cs := s.Containers()
		owned := reg("owned")
		owned.Uid, owned.Gid = 1000, 1001
		if err := cs.CopyTo(c, "/etc", tarOf(t, owned), container.CopyToOptions{}); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Lstat(root + "/etc/owned"); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("copied without -a: %v, want owned by root", err)
		}
		if err := cs.CopyTo(c, "/data", tarOf(t, owned), container.CopyToOptions{CopyUIDGID: true}); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Lstat(root + "/data/owned"); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 1000 {
			t.Errorf("copied with -a: %v, want uid 1000", err)
		}
		// A whiteout name is a plain file, not a deletion; aufs, whose
		// format reserves such names, refuses it.
		if err := cs.CopyTo(c, "/etc", tarOf(t, reg(".wh.passwd")), container.CopyToOptions{}); s.Driver().String() == "aufs" {
			if err == nil {
				t.Error("aufs took a .wh. file")
			}
		} else if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(root + "/etc/passwd"); err != nil {
			t.Errorf("a .wh. file deleted its target: %v", err)
		}
		// A file never replaces a directory, nor a directory a file.
		err := cs.CopyTo(c, "/", tarOf(t, reg("data")), container.CopyToOptions{})
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("a file onto a directory: %v, want ErrInvalid", err)
		}
		err = cs.CopyTo(c, "/etc", tarOf(t, dir("passwd", 0o755)), container.CopyToOptions{})
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("a directory onto a file: %v, want ErrInvalid", err)
		}
		if fi, err := os.Lstat(root + "/data/sub/deep"); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("the refused copies changed the tree: %v", err)
		}
		if err := cs.CopyTo(c, "/etc/passwd", tarOf(t, reg("x")), container.CopyToOptions{}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("copy into a file: %v, want ErrInvalid", err)
		}
		if err := cs.CopyTo(c, "/nope", tarOf(t, reg("x")), container.CopyToOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("copy into a missing dir: %v, want ErrNotFound", err)
		}
	})
}

// TestCopyEscapes tries to leave the container root through symlinks that
// the container holds and names that climb: every path must resolve inside
// the root, and the sentinel files outside stay as they are.
func TestCopyEscapes(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		fsImage(t, s)
		c, root := fsContainer(t, s)
		cs := s.Containers()
		outside := t.TempDir()
		if err := os.WriteFile(outside+"/secret", []byte("host secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		hostEtc, _ := os.ReadFile("/etc/passwd")
		for name, target := range map[string]string{
			"evil":    "/",
			"up":      "../../../../../../..",
			"etc2":    "/etc",
			"outside": outside, // absolute, and a real host directory
			"secret":  outside + "/secret",
		} {
			if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range []string{"/evil/etc/passwd", "/up/etc/passwd", "/etc2/passwd", "/../../../etc/passwd", "../etc/passwd", "/up/up/evil/etc/passwd"} {
			entries, _, err := copyFrom(t, s, c, p)
			if err != nil || entries["passwd"].Body != "etc/passwd" {
				t.Errorf("copy from %s: %+v, %v; want the container's /etc/passwd", p, entries, err)
			}
		}
		for _, p := range []string{"/outside/secret", "/up" + outside + "/secret", "/secret/"} {
			entries, _, err := copyFrom(t, s, c, p)
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("copy from %s: %+v, %v; want ErrNotFound", p, entries, err)
			}
		}
		// -L follows /secret in the container's root: nothing there.
		if st, err := cs.Stat(c, "/secret"); err != nil || st.LinkTarget != outside+"/secret" {
			t.Errorf("stat /secret: %+v, %v", st, err)
		}

		// Writes: through links to "/" and "..", into the container root.
		for _, p := range []string{"/evil", "/up", "/../..", "/evil/etc2/.."} {
			if err := cs.CopyTo(c, p, tarOf(t, reg("dropped")), container.CopyToOptions{}); err != nil {
				t.Errorf("copy to %s: %v", p, err)
			}
		}
		if b, err := os.ReadFile(root + "/dropped"); err != nil || string(b) != "dropped" {
			t.Errorf("copies through links to / did not land in the container root: %q, %v", b, err)
		}
		if err := cs.CopyTo(c, "/etc2", tarOf(t, reg("dropped")), container.CopyToOptions{}); err != nil {
			t.Error(err)
		}
		if _, err := os.Lstat(root + "/etc/dropped"); err != nil {
			t.Errorf("copy to /etc2 did not land in the container's /etc: %v", err)
		}
		// The destination's last element is a link to a host directory.
		if err := cs.CopyTo(c, "/outside", tarOf(t, reg("dropped")), container.CopyToOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("copy to /outside: %v, want ErrNotFound", err)
		}
		// Entries that climb or go through links out of the directory.
		for _, hdrs := range [][]tar.Header{
			{reg("../../../../escaped")},
			{{Typeflag: tar.TypeSymlink, Name: "hop", Linkname: outside}, reg("hop/escaped")},
			{{Typeflag: tar.TypeLink, Name: "hard", Linkname: "../../../../" + outside + "/secret"}},
		} {
			if err := cs.CopyTo(c, "/data", tarOf(t, hdrs...), container.CopyToOptions{}); err == nil {
				// Apply keeps a link's target inside: check it did.
				if _, err := os.Stat(outside + "/escaped"); err == nil {
					t.Errorf("%+v escaped", hdrs)
				}
			}
		}
		entries, err := os.ReadDir(outside)
		if err != nil || len(entries) != 1 {
			t.Errorf("the host directory changed: %v, %v", entries, err)
		}
		if b, _ := os.ReadFile(outside + "/secret"); string(b) != "host secret" {
			t.Errorf("the host secret changed: %q", b)
		}
		if b, _ := os.ReadFile("/etc/passwd"); !bytes.Equal(b, hostEtc) || strings.Contains(string(b), "dropped") {
			t.Error("the host's /etc/passwd changed")
		}
		if _, err := os.Lstat("/dropped"); err == nil {
			t.Error("a copy landed in the host's /")
		}
	})
}

// TestCopyToAsUser: docker cp -a into a container whose config names a
// user gives what it copies to that user, found in the container's own
// passwd and group files.
func TestCopyToAsUser(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		fsImage(t, s)
		asUser := container.CopyToOptions{CopyUIDGID: true, AsUser: true}
		for _, c := range []struct {
			user     string
			uid, gid uint32
		}{{"app:staff", 1000, 50}, {"", 7, 8}} {
			ctr, err := s.CreateContainer("fs:1", container.CreateOptions{Config: []byte(`{"User":"` + c.user + `"}`)})
			if err != nil {
				t.Fatal(err)
			}
			root, err := s.Containers().Mount(ctr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Containers().Unmount(ctr) })
			if err := os.WriteFile(root+"/etc/passwd", []byte("app:x:1000:1001::/:/bin/sh\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(root+"/etc/group", []byte("staff:x:50:app\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			owned := reg("owned")
			owned.Uid, owned.Gid = 7, 8
			if err := s.Containers().CopyTo(ctr, "/data", tarOf(t, owned), asUser); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(root + "/data/owned")
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); st.Uid != c.uid || st.Gid != c.gid {
				t.Errorf("cp -a as %q: owned by %d:%d, want %d:%d", c.user, st.Uid, st.Gid, c.uid, c.gid)
			}
		}
		ghost, err := s.CreateContainer("fs:1", container.CreateOptions{Config: []byte(`{"User":"ghost"}`)})
		if err != nil {
			t.Fatal(err)
		}
		err = s.Containers().CopyTo(ghost, "/data", tarOf(t, reg("x")), asUser)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "unable to find user ghost") {
			t.Errorf("cp -a as a user the container does not know: %v", err)
		}
	})
}
