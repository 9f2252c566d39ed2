package container_test

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/strata-storage/strata/archive"
	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/store"
)

// fsImage is fs:1, the image the diff, export and cp cases change: a base
// layer and a second one that adds a symlink.
func fsImage(t *testing.T, s *store.Store) {
	t.Helper()
	symlink := tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/os-release", Linkname: "../usr/os-release", Mode: 0o777}
	addImage(t, s, "fs:1", "/bin/sh",
		layerTar(t, dir("bin", 0o755), reg("bin/sh"), dir("data", 0o755), reg("data/old"),
			dir("data/sub", 0o700), reg("data/sub/deep"), dir("etc", 0o755), reg("etc/keep"),
			reg("etc/passwd"), dir("usr", 0o755), reg("usr/os-release"), dir("var", 0o755), reg("var/linked")),
		layerTar(t, symlink))
}

// fsContainer creates a container of fs:1 and mounts it.
func fsContainer(t *testing.T, s *store.Store) (container.Container, string) {
	t.Helper()
	c, err := s.CreateContainer("fs:1", container.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := s.Containers().Mount(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Containers().Unmount(c) })
	return c, root
}

// changeFiles makes in the mounted root the changes of the issue's
// scenario (write, overwrite, delete, rename, chmod, hard link) and returns
// what docker diff lists for them, sorted.
func changeFiles(t *testing.T, root string) []string {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(root+"/etc/new", []byte("new"), 0o644))
	must(os.WriteFile(root+"/etc/passwd", []byte("root:x:0:0::/root:/bin/sh\n"), 0o644))
	must(os.Remove(root + "/etc/keep"))
	must(os.Rename(root+"/data/old", root+"/data/renamed"))
	must(os.RemoveAll(root + "/data/sub"))
	must(os.Chmod(root+"/bin/sh", 0o700))
	must(os.WriteFile(root+"/bin/tool", []byte("tool"), 0o755))
	must(os.Link(root+"/var/linked", root+"/var/hard"))
	return []string{
		"C /bin", "C /bin/sh", "A /bin/tool",
		"C /data", "D /data/old", "A /data/renamed", "D /data/sub",
		"C /etc", "D /etc/keep", "A /etc/new", "C /etc/passwd",
		// The link's target is unchanged: docker diff does not list it.
		"A /var/hard", "C /var",
	}
}

func changeLines(changes []archive.Change) []string {
	lines := make([]string, len(changes))
	for i, c := range changes {
		lines[i] = c.Kind.String() + " " + c.Path
	}
	return lines
}

// byPath sorts diff lines by path, as docker diff prints them.
func byPath(lines []string) []string {
	sorted := slices.Clone(lines)
	slices.SortFunc(sorted, func(a, b string) int { return strings.Compare(a[2:], b[2:]) })
	return sorted
}

func TestChanges(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		fsImage(t, s)
		c, root := fsContainer(t, s)
		changes, err := s.Containers().Changes(c)
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) != 0 {
			t.Errorf("a new container has changes (init layer files?): %v", changeLines(changes))
		}
		want := byPath(changeFiles(t, root))
		if changes, err = s.Containers().Changes(c); err != nil {
			t.Fatal(err)
		}
		if got := changeLines(changes); !slices.Equal(got, want) {
			t.Errorf("changes\n got %q\nwant %q", got, want)
		}
	})
}

// tarEntry is what the tests compare of a tar entry.
type tarEntry struct {
	Type     byte
	Mode     int64
	Uid, Gid int
	Size     int64
	Link     string
	Body     string // for small files
}

// readTar reads a tar into its entries by name, bodies of up to 1 KiB kept.
func readTar(t *testing.T, r io.Reader) (map[string]tarEntry, []string) {
	t.Helper()
	entries := map[string]tarEntry{}
	var names []string
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return entries, names
		}
		if err != nil {
			t.Fatal(err)
		}
		e := tarEntry{Type: hdr.Typeflag, Mode: hdr.Mode, Uid: hdr.Uid, Gid: hdr.Gid, Size: hdr.Size, Link: hdr.Linkname}
		if hdr.Size <= 1024 {
			b, _ := io.ReadAll(tr)
			e.Body = string(b)
		}
		if _, dup := entries[hdr.Name]; dup {
			t.Errorf("entry %s twice", hdr.Name)
		}
		entries[hdr.Name] = e
		names = append(names, hdr.Name)
	}
}

// readRoot reads the tree at root as export should write it.
func readRoot(t *testing.T, root string) map[string]tarEntry {
	t.Helper()
	entries := map[string]tarEntry{}
	firstName := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		name := p[len(root)+1:]
		st := fi.Sys().(*syscall.Stat_t)
		e := tarEntry{Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid)}
		switch {
		case fi.IsDir():
			e.Type, name = tar.TypeDir, name+"/"
		case fi.Mode()&fs.ModeSymlink != 0:
			e.Type = tar.TypeSymlink
			e.Link, _ = os.Readlink(p)
		case fi.Mode().IsRegular():
			if first, ok := firstName[st.Ino]; ok && st.Nlink > 1 {
				e.Type, e.Link = tar.TypeLink, first
				break
			}
			firstName[st.Ino] = name
			e.Type, e.Size = tar.TypeReg, fi.Size()
			if e.Size <= 1024 {
				b, _ := os.ReadFile(p)
				e.Body = string(b)
			}
		default:
			e.Type = 'x' // devices and the like: compared by name only
		}
		entries[name] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

func TestExportEqualsMountedTree(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		fsImage(t, s)
		c, root := fsContainer(t, s)
		changeFiles(t, root)
		var buf bytes.Buffer
		if err := s.Containers().Export(c, &buf); err != nil {
			t.Fatal(err)
		}
		got, names := readTar(t, &buf)
		want := readRoot(t, root)
		for name, e := range want {
			g, ok := got[name]
			if e.Type == 'x' && ok {
				continue
			}
			if g != e {
				t.Errorf("%s: exported %+v, mounted %+v", name, g, e)
			}
		}
		for name := range got {
			if _, ok := want[name]; !ok {
				t.Errorf("%s exported, not in the mounted tree", name)
			}
		}
		for i, name := range names {
			if strings.HasPrefix(name, "/") || strings.HasPrefix(name, "./") {
				t.Errorf("entry %q is not relative", name)
			}
			if i > 0 && strings.HasPrefix(names[i-1], name) {
				t.Errorf("entry %q after its content %q", name, names[i-1])
			}
		}
		if got["var/hard"].Type != tar.TypeLink && got["var/linked"].Type != tar.TypeLink {
			t.Errorf("the hard link is no link: %+v %+v", got["var/hard"], got["var/linked"])
		}
		if _, ok := got[".dockerenv"]; !ok {
			t.Error("export misses the init layer's /.dockerenv")
		}
	})
}

func TestDiffTar(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		fsImage(t, s)
		c, root := fsContainer(t, s)
		changeFiles(t, root)
		rc, err := s.Containers().Diff(c)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := readTar(t, rc)
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
		// As Docker's commit writes it: overlay's tar is its upper dir, where
		// the copy-up of the link's target makes the pair a hard link; a
		// tree comparison leaves the unchanged target out, and the new name
		// carries the content.
		want := []string{
			"bin/", "bin/sh", "bin/tool", "data/", "data/.wh.old", "data/.wh.sub", "data/renamed",
			"etc/", "etc/.wh.keep", "etc/new", "etc/passwd", "var/", "var/hard",
		}
		// overlay's and aufs's tars are the layer's own directory: the
		// copied-up target of the link is in it.
		overlay := s.Driver().String() == "overlay" || s.Driver().String() == "aufs"
		if overlay {
			want = append(want, "var/linked")
		}
		if names := slices.Sorted(maps.Keys(got)); !slices.Equal(names, want) {
			t.Errorf("diff tar entries\n got %q\nwant %q", names, want)
		}
		if e := got["bin/sh"]; e.Mode != 0o700 || e.Body != "bin/sh" {
			t.Errorf("bin/sh %+v", e)
		}
		if overlay {
			if e := got["var/linked"]; e.Type != tar.TypeLink || e.Link != "var/hard" {
				t.Errorf("var/linked is %+v, want a hard link to var/hard", e)
			}
		} else if e := got["var/hard"]; e.Type != tar.TypeReg || e.Body == "" {
			t.Errorf("var/hard is %+v, want a file with the content", e)
		}
	})
}
