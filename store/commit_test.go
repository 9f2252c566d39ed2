package store

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/layer"
)

// commitStores runs test on a fresh store per driver.
func commitStores(t *testing.T, test func(t *testing.T, s *Store)) {
	for _, name := range []string{"vfs", "overlay"} {
		t.Run(name, func(t *testing.T) {
			s, err := Open(Options{Root: t.TempDir(), Driver: name})
			if errors.Is(err, errdefs.ErrNotSupported) {
				t.Skip(err)
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			test(t, s)
		})
	}
}

// baseImage is base:1: one layer with /etc/passwd and /etc/keep, Cmd
// ["/bin/sh"] and one history entry.
func baseImage(t *testing.T, s *Store) digest.Digest {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755})
	for _, name := range []string{"etc/keep", "etc/passwd"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(name))})
		io.WriteString(tw, name)
	}
	tw.Close()
	lease, err := s.Layers().NewLease()
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release()
	l, err := s.Layers().Register(t.Context(), lease, "", &buf)
	if err != nil {
		t.Fatal(err)
	}
	config := `{"architecture":"amd64","os":"linux","docker_version":"27.0.0",
		"config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"Hostname":"kept"},
		"history":[{"created_by":"ADD rootfs"}],
		"rootfs":{"type":"layers","diff_ids":["` + l.DiffID.String() + `"]}}`
	img, err := s.CreateImage([]byte(config), "base:1")
	if err != nil {
		t.Fatal(err)
	}
	return img.ID
}

// mountedContainer creates a container of base:1 and mounts it.
func mountedContainer(t *testing.T, s *Store) (container.Container, string) {
	t.Helper()
	c, err := s.CreateContainer("base:1", container.CreateOptions{})
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

// topLayerEntries returns the entry names and sizes of the tar of the
// image's top layer.
func topLayerEntries(t *testing.T, s *Store, diffIDs []digest.Digest) ([]string, map[string]int64) {
	t.Helper()
	rc, err := s.Layers().TarStream(layer.ChainID(diffIDs))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	sizes := map[string]int64{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names, sizes
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		sizes[hdr.Name] = hdr.Size
	}
}

func TestCommit(t *testing.T) {
	commitStores(t, func(t *testing.T, s *Store) {
		parent := baseImage(t, s)
		c, root := mountedContainer(t, s)
		if err := os.WriteFile(root+"/etc/new", []byte("new"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(root + "/etc/keep"); err != nil {
			t.Fatal(err)
		}
		img, err := s.Commit(t.Context(), c.Name, CommitOptions{
			Ref: "committed", Message: "a message", Author: "someone",
			Changes: []string{`CMD ["run"]`, `ENV X=1`},
		})
		if err != nil {
			t.Fatal(err)
		}
		if img.Parent != parent || !slices.Equal(img.RepoTags, []string{"docker.io/library/committed:latest"}) {
			t.Errorf("parent %s tags %v", img.Parent, img.RepoTags)
		}
		var cfg struct {
			Config          map[string]any `json:"config"`
			ContainerConfig map[string]any `json:"container_config"`
			Container       string         `json:"container"`
			Author          string         `json:"author"`
			DockerVersion   *string        `json:"docker_version"`
			Architecture    string         `json:"architecture"`
		}
		if err := json.Unmarshal(img.Config, &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.Container != c.ID || cfg.Author != "someone" || cfg.DockerVersion != nil || cfg.Architecture != "amd64" {
			t.Errorf("config %s", img.Config)
		}
		if got := cfg.Config["Cmd"]; !jsonEqual(got, []any{"run"}) || !jsonEqual(cfg.Config["Env"], []any{"PATH=/bin", "X=1"}) ||
			cfg.Config["Hostname"] != "kept" || cfg.Config["Image"] != "base:1" {
			t.Errorf("config %v", cfg.Config)
		}
		if !jsonEqual(cfg.ContainerConfig["Cmd"], []any{"/bin/sh"}) || !jsonEqual(cfg.ContainerConfig["Env"], []any{"PATH=/bin"}) {
			t.Errorf("container_config %v", cfg.ContainerConfig)
		}
		h := img.Spec.History
		if len(h) != 2 || h[1].CreatedBy != "/bin/sh" || h[1].Comment != "a message" || h[1].Author != "someone" || h[1].EmptyLayer || h[1].Created == nil {
			t.Errorf("history %+v", h)
		}
		// docker history names the commit, then its parent image.
		rows, err := s.History(img)
		if err != nil || len(rows) != 2 || rows[0].ID != img.ID.String() || rows[1].ID != parent.String() {
			t.Errorf("history rows %+v, %v; want the commit's id, then the parent's", rows, err)
		}
		diffIDs := img.DiffIDs()
		if len(diffIDs) != 2 {
			t.Fatalf("diff IDs %v", diffIDs)
		}
		if names, _ := topLayerEntries(t, s, diffIDs); !slices.Equal(names, []string{"etc/", "etc/.wh.keep", "etc/new"}) {
			t.Errorf("committed layer holds %q", names)
		}

		// CommitThenCreate: a container of the commit sees the changes.
		c2, err := s.CreateContainer("committed", container.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		root2, err := s.Containers().Mount(c2)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Containers().Unmount(c2)
		if b, err := os.ReadFile(root2 + "/etc/new"); err != nil || string(b) != "new" {
			t.Errorf("/etc/new in a container of the commit: %q, %v", b, err)
		}
		if _, err := os.Lstat(root2 + "/etc/keep"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("/etc/keep in a container of the commit: %v", err)
		}
		if changes, err := s.Containers().Changes(c2); err != nil || len(changes) != 0 {
			t.Errorf("a new container of the commit has changes %v, %v", changes, err)
		}
	})
}

// TestCommitBigFile is the seed's example: a container that wrote a 100 MB
// file commits to a layer holding exactly that file and its directory.
func TestCommitBigFile(t *testing.T) {
	commitStores(t, func(t *testing.T, s *Store) {
		baseImage(t, s)
		c, root := mountedContainer(t, s)
		if err := os.Mkdir(root+"/srv", 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(root + "/srv/big")
		if err == nil {
			err = f.Truncate(100 << 20) // sparse: the test writes no 100 MB
		}
		if err == nil {
			err = f.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
		img, err := s.Commit(t.Context(), c.ID, CommitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		names, sizes := topLayerEntries(t, s, img.DiffIDs())
		if !slices.Equal(names, []string{"srv/", "srv/big"}) || sizes["srv/big"] != 100<<20 {
			t.Errorf("committed layer holds %q %v", names, sizes)
		}
	})
}

func TestCommitWithoutChanges(t *testing.T) {
	commitStores(t, func(t *testing.T, s *Store) {
		parent := baseImage(t, s)
		c, _ := mountedContainer(t, s)
		layersBefore, _ := s.Layers().List()
		img, err := s.Commit(t.Context(), c.ID[:12], CommitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p, _ := s.Images().Get(parent)
		if !slices.Equal(img.DiffIDs(), p.DiffIDs()) {
			t.Errorf("diff IDs %v, want the parent's %v", img.DiffIDs(), p.DiffIDs())
		}
		if h := img.Spec.History; len(h) != 2 || !h[1].EmptyLayer {
			t.Errorf("history %+v, want an empty_layer entry", h)
		}
		if layers, _ := s.Layers().List(); len(layers) != len(layersBefore) {
			t.Errorf("%d layers, want %d: the empty layer is kept", len(layers), len(layersBefore))
		}
	})
}

func TestCommitRefused(t *testing.T) {
	commitStores(t, func(t *testing.T, s *Store) {
		baseImage(t, s)
		c, root := mountedContainer(t, s)
		os.WriteFile(root+"/file", []byte("x"), 0o644)
		layersBefore, _ := s.Layers().List()
		for _, tc := range []struct {
			ref  string
			opts CommitOptions
			want error
		}{
			{c.ID, CommitOptions{Ref: "app@sha256:" + digest.FromString("x").Encoded()}, errdefs.ErrInvalid},
			{c.ID, CommitOptions{Ref: "Bad Name"}, errdefs.ErrInvalid},
			{c.ID, CommitOptions{Changes: []string{"RUN rm -rf /"}}, errdefs.ErrNotSupported},
			{"no-such-container", CommitOptions{}, errdefs.ErrNotFound},
		} {
			if _, err := s.Commit(t.Context(), tc.ref, tc.opts); !errors.Is(err, tc.want) {
				t.Errorf("commit %s %+v: %v, want %v", tc.ref, tc.opts, err, tc.want)
			}
		}
		if layers, _ := s.Layers().List(); len(layers) != len(layersBefore) {
			t.Errorf("refused commits left layers: %d, want %d", len(layers), len(layersBefore))
		}
		if imgs, _ := s.Images().List(); len(imgs) != 1 {
			t.Errorf("refused commits left images: %d", len(imgs))
		}
	})
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}
