package store

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/layer"
)

func openStore(t testing.TB, root string) *Store {
	t.Helper()
	s, err := Open(Options{Root: root, Driver: "vfs"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// layerTar is a one-file layer tar; name makes it unique.
func layerTar(t testing.TB, name string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(name)), Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	io.WriteString(tw, name)
	tw.Close()
	return buf.Bytes()
}

// addImage registers layers named by files (base first) and creates an
// image of them tagged refs, as a loader does.
func addImage(t testing.TB, s *Store, files []string, refs ...string) (digest.Digest, []digest.Digest) {
	t.Helper()
	lease, err := s.Layers().NewLease()
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release()
	var srcs []layer.Source
	var diffIDs []digest.Digest
	for _, f := range files {
		b := layerTar(t, f)
		srcs = append(srcs, layer.Source{DiffID: digest.FromBytes(b), Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}})
		diffIDs = append(diffIDs, digest.FromBytes(b))
	}
	layers, err := s.Layers().RegisterChain(t.Context(), lease, "", srcs)
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.CreateImage(config(diffIDs...), refs...)
	if err != nil {
		t.Fatal(err)
	}
	chains := make([]digest.Digest, len(layers))
	for i, l := range layers {
		chains[i] = l.ChainID
	}
	return img.ID, chains
}

func config(diffIDs ...digest.Digest) []byte {
	quoted := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		quoted[i] = fmt.Sprintf("%q", d)
	}
	return fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%s]}}`, strings.Join(quoted, ","))
}

func TestOpenRootAndDriverRecord(t *testing.T) {
	root := t.TempDir() + "/store"
	s := openStore(t, root)
	if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("root mode %v, %v; want 0711", fi.Mode(), err)
	}
	addImage(t, s, []string{"a"}, "app")
	s.Close()

	again, err := Open(Options{Root: root}) // the recorded driver, not an automatic choice
	if err != nil {
		t.Fatal(err)
	}
	if again.Driver().String() != "vfs" {
		t.Errorf("reopened with driver %s, want the recorded vfs", again.Driver())
	}
	if _, err := again.Images().Resolve("app"); err != nil {
		t.Error(err)
	}
	again.Close()
	if _, err := Open(Options{Root: root, Driver: "overlay"}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("opening vfs images with overlay: err = %v, want ErrInvalid", err)
	}
	if os.Geteuid() == 0 && DefaultRoot() != "/var/lib/strata" {
		t.Errorf("DefaultRoot() = %s for root", DefaultRoot())
	}
}

func TestCreateImageNeedsItsLayers(t *testing.T) {
	s := openStore(t, t.TempDir())
	_, err := s.CreateImage(config(digest.FromString("never registered")), "ghost")
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	if imgs, _ := s.Images().List(); len(imgs) != 0 {
		t.Errorf("images recorded: %+v", imgs)
	}
	if _, err := s.CreateImage([]byte(`{"rootfs":{"type":"layers","diff_ids":[]}}`), "Bad Name"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("bad reference: err = %v", err)
	}
	if imgs, _ := s.Images().List(); len(imgs) != 0 {
		t.Errorf("a failed CreateImage left images: %+v", imgs)
	}
}

func untagged(refs ...string) []Removed {
	var out []Removed
	for _, r := range refs {
		out = append(out, Removed{Untagged: r})
	}
	return out
}

func deleted(ids ...digest.Digest) []Removed {
	var out []Removed
	for _, id := range ids {
		out = append(out, Removed{Deleted: id.String()})
	}
	return out
}

func TestRemoveImage(t *testing.T) {
	const lib = "docker.io/library/"
	dgst := "@sha256:" + strings.Repeat("ab", 32)
	for _, c := range []struct {
		name string
		// run sets the store up and returns the ref to remove and the
		// expected result.
		run     func(t *testing.T, s *Store) (ref string, force bool, want []Removed)
		wantErr error
		left    int // images left
	}{
		{name: "one of several tags", left: 1, run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			addImage(t, s, []string{"a"}, "app:1", "app:2")
			return "app:1", false, untagged(lib + "app:1")
		}},
		{name: "last tag deletes image and layers", run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			id, chains := addImage(t, s, []string{"a", "b"}, "app")
			return "app", false, slices.Concat(untagged(lib+"app:latest"), deleted(id, chains[1], chains[0]))
		}},
		{name: "last tag takes the repo's digests", run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			id, chains := addImage(t, s, []string{"a"}, "app", "app"+dgst)
			return "app:latest", false, slices.Concat(untagged(lib+"app:latest", lib+"app"+dgst), deleted(id, chains[0]))
		}},
		{name: "by ID in several repositories", wantErr: errdefs.ErrInUse, left: 1, run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			id, _ := addImage(t, s, []string{"a"}, "app", "other")
			return id.Encoded()[:12], false, nil
		}},
		{name: "by ID in several repositories, forced", run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			id, chains := addImage(t, s, []string{"a"}, "other", "app")
			return id.String(), true, slices.Concat(untagged(lib+"app:latest", lib+"other:latest"), deleted(id, chains[0]))
		}},
		{name: "by ID with tags of one repository", run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			id, chains := addImage(t, s, []string{"a"}, "app:1", "app:2")
			return id.Encoded(), false, slices.Concat(untagged(lib+"app:1", lib+"app:2"), deleted(id, chains[0]))
		}},
		{name: "by ID with a child, forced", wantErr: errdefs.ErrInUse, left: 2, run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			parent, _ := addImage(t, s, []string{"a"}, "base")
			child, _ := addImage(t, s, []string{"a", "b"}, "app")
			if err := s.Images().SetParent(child, parent); err != nil {
				t.Fatal(err)
			}
			return parent.Encoded()[:8], true, nil
		}},
		{name: "last tag of a parent keeps it", left: 2, run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			parent, _ := addImage(t, s, []string{"a"}, "base")
			child, _ := addImage(t, s, []string{"a", "b"}, "app")
			if err := s.Images().SetParent(child, parent); err != nil {
				t.Fatal(err)
			}
			return "base", false, untagged(lib + "base:latest")
		}},
		{name: "shared base layer stays", left: 1, run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			addImage(t, s, []string{"a", "b"}, "one")
			id, chains := addImage(t, s, []string{"a", "c"}, "two")
			return "two", false, slices.Concat(untagged(lib+"two:latest"), deleted(id, chains[1]))
		}},
		{name: "missing", wantErr: errdefs.ErrNotFound, run: func(t *testing.T, s *Store) (string, bool, []Removed) {
			return "nothing", false, nil
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			ref, force, want := c.run(t, s)
			got, err := s.RemoveImage(ref, RemoveImageOptions{Force: force})
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("RemoveImage(%q, %v): err = %v, want %v", ref, force, err, c.wantErr)
			}
			if err != nil {
				t.Log(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("RemoveImage(%q, %v) =\n%v\nwant\n%v", ref, force, got, want)
			}
			imgs, err := s.Images().List()
			if err != nil || len(imgs) != c.left {
				t.Errorf("%d images left, %v; want %d", len(imgs), err, c.left)
			}
			// Every layer left belongs to an image left.
			layers, _ := s.Layers().List()
			live := map[digest.Digest]bool{}
			for _, img := range imgs {
				for i := range img.DiffIDs() {
					live[layer.ChainID(img.DiffIDs()[:i+1])] = true
				}
			}
			for _, l := range layers {
				if !live[l.ChainID] {
					t.Errorf("layer %s outlived its images", l.ChainID)
				}
			}
			if len(layers) != len(live) {
				t.Errorf("%d layers for %d needed", len(layers), len(live))
			}
		})
	}
}

// TestRemoveImagePrunesParents: removing an image removes the local
// parents it leaves without references, children or containers, as docker
// rmi does, unless NoPrune.
func TestRemoveImagePrunesParents(t *testing.T) {
	for _, noPrune := range []bool{false, true} {
		s := openStore(t, t.TempDir())
		base, _ := addImage(t, s, []string{"a"}, "base:1")
		mid, chains := addImage(t, s, []string{"a", "b"})
		top, topChains := addImage(t, s, []string{"a", "b", "c"}, "top:1")
		if err := s.Images().SetParent(mid, base); err != nil {
			t.Fatal(err)
		}
		if err := s.Images().SetParent(top, mid); err != nil {
			t.Fatal(err)
		}
		got, err := s.RemoveImage("top:1", RemoveImageOptions{NoPrune: noPrune})
		if err != nil {
			t.Fatal(err)
		}
		want := append(untagged("docker.io/library/top:1"), deleted(top, topChains[2])...)
		if !noPrune {
			want = append(want, deleted(mid, chains[1])...)
		}
		if !slices.Equal(got, want) {
			t.Errorf("NoPrune %v: RemoveImage =\n%v\nwant\n%v", noPrune, got, want)
		}
		if _, err := s.Images().Get(mid); noPrune != (err == nil) {
			t.Errorf("NoPrune %v: the untagged parent: %v", noPrune, err)
		}
		if _, err := s.Images().Get(base); err != nil {
			t.Errorf("the tagged grandparent went: %v", err)
		}
	}
}
