// Package e2e drives the built strata binary, and compares what it stores
// with what a real Docker stores, on the realistic images that
// scripts/make-images.sh builds (STRATA_TEST_IMAGES; `make test` makes them).
package e2e

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/store"
)

var strataBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strata-e2e-bin.")
	if err != nil {
		panic(err)
	}
	strataBin = filepath.Join(dir, "strata")
	build := exec.Command("go", "build", "-o", strataBin, "../cmd/strata")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building strata:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// images returns the directory of the realistic test images. It fails, not
// skips, when they are missing: `make test` builds them first.
func images(t *testing.T) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: loads images into overlay and runs dockerd")
	}
	dir := os.Getenv("STRATA_TEST_IMAGES")
	if dir == "" {
		dir = "/var/tmp/strata-images"
	}
	if _, err := os.Stat(filepath.Join(dir, "app.tar")); err != nil {
		t.Fatalf("test images missing (run `make images` or scripts/make-images.sh %s): %v", dir, err)
	}
	return dir
}

// strata runs the strata binary on root and returns its standard output.
func strata(t *testing.T, root string, args ...string) string {
	t.Helper()
	cmd := exec.Command(strataBin, append([]string{"--root", root}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("strata %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// newRoot returns a fresh store root that is cleaned up (mounts included).
func newRoot(t *testing.T) string {
	t.Helper()
	root, err := os.MkdirTemp("/var/tmp", "strata-e2e-root.")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmountUnder(root)
		os.RemoveAll(root)
	})
	return root
}

// withMountedImage mounts ref's top layer through the library and calls fn.
func withMountedImage(t *testing.T, root, ref string, fn func(dir string)) {
	t.Helper()
	s, err := store.Open(store.Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	img, err := s.Images().Resolve(ref)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Layers().Get(layer.ChainID(img.DiffIDs()))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := s.Driver().Get(l.CacheID, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Driver().Put(l.CacheID)
	fn(dir)
}

// TestLoadMatchesDockerExport loads the Docker-made archive into strata
// (overlay) and into a real dockerd, and compares strata's mounted root file
// system with the tar that `docker export` gives: same paths, types, modes,
// owners, sizes, link targets, xattrs and hard links.
func TestLoadMatchesDockerExport(t *testing.T) {
	dir := images(t)
	d := startDockerd(t)
	if _, err := d.run("load", "-i", filepath.Join(dir, "app.tar")); err != nil {
		t.Fatal(err)
	}
	id, err := d.run("create", "app:1")
	if err != nil {
		t.Fatal(err)
	}
	exportPath := filepath.Join(d.dir, "export.tar")
	if _, err := d.run("export", "-o", exportPath, strings.TrimSpace(id)); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(exportPath)
	if err != nil {
		t.Fatal(err)
	}
	want, links := readExport(t, f)
	f.Close()

	root := newRoot(t)
	strata(t, root, "--storage-driver", "overlay", "load", "-i", filepath.Join(dir, "app.tar"))
	withMountedImage(t, root, "app:1", func(mnt string) {
		got, inodes := readTree(t, mnt)
		var diffs []string
		for p, w := range want {
			if dockerInit[p] {
				continue
			}
			g, ok := got[p]
			switch {
			case !ok:
				diffs = append(diffs, "missing in strata: "+p)
			case !g.equal(w):
				diffs = append(diffs, fmt.Sprintf("%s: strata %v, docker %v", p, g, w))
			}
		}
		for p := range got {
			if _, ok := want[p]; !ok && !dockerInit[p] {
				diffs = append(diffs, "only in strata: "+p)
			}
		}
		for _, l := range links {
			if inodes[l[0]] == 0 || inodes[l[0]] != inodes[l[1]] {
				diffs = append(diffs, fmt.Sprintf("hard link %s -> %s not kept", l[0], l[1]))
			}
		}
		sort.Strings(diffs)
		if len(diffs) > 0 {
			t.Fatalf("%d differences with docker export, e.g.:\n%s", len(diffs), strings.Join(diffs[:min(len(diffs), 30)], "\n"))
		}
		if len(want) < 20000 {
			t.Fatalf("docker export has only %d entries: not the realistic image", len(want))
		}
		t.Logf("%d paths, %d hard links identical to docker export", len(want), len(links))
	})
}

// TestLoadLayouts loads each archive layout and checks that the image comes
// out with the same ID and the same layers.
func TestLoadLayouts(t *testing.T) {
	dir := images(t)
	v1 := makeV1Only(t, filepath.Join(dir, "app.tar"))
	cases := []struct{ name, path string }{
		{"docker-manifest", filepath.Join(dir, "app.tar")},
		{"v1-only", v1},
		{"oci-archive", filepath.Join(dir, "app-oci.tar")},
		{"oci-dir-gzip", filepath.Join(dir, "app-oci")},
		{"oci-dir-zstd", filepath.Join(dir, "app-oci-zstd")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := newRoot(t)
			out := strata(t, root, "load", "-i", c.path)
			if !strings.Contains(out, "Loaded image") {
				t.Fatalf("load printed %q", out)
			}
			ids := strings.Fields(strata(t, root, "images", "-q"))
			if len(ids) != 1 {
				t.Fatalf("images -q: %v", ids)
			}
			var inspect []struct {
				RootFS struct{ Layers []string }
			}
			if err := json.Unmarshal([]byte(strata(t, root, "image", "inspect", ids[0])), &inspect); err != nil {
				t.Fatal(err)
			}
			if n := len(inspect[0].RootFS.Layers); n != 7 {
				t.Fatalf("%d layers, want 7", n)
			}
			if c.name != "v1-only" {
				// every layout but v1 carries Docker's own config: same image ID
				tree := strata(t, root, "images", "--tree")
				if strings.Count(tree, "Virtual Size") != 7 {
					t.Fatalf("tree:\n%s", tree)
				}
			}
		})
	}
}

// makeV1Only rewrites a docker save archive without manifest.json, leaving
// the seed's v1 layout (<id>/json, <id>/layer.tar, repositories).
func makeV1Only(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "v1.tar")
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tr, tw := tar.NewReader(in), tar.NewWriter(out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "manifest.json" || strings.HasSuffix(h.Name, ".json") && !strings.Contains(h.Name, "/") {
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestSaveRoundTrip saves a loaded image, checks that every saved layer blob
// has the digest its config names, that loading the save again changes
// nothing, and that a real Docker loads strata's archive to the same image.
func TestSaveRoundTrip(t *testing.T) {
	dir := images(t)
	root := newRoot(t)
	strata(t, root, "load", "-i", filepath.Join(dir, "app.tar"))
	saved := filepath.Join(root, "saved.tar")
	strata(t, root, "save", "-o", saved, "app:1")

	blobs := map[string]string{} // name -> sha256 of content
	var manifest []struct {
		Config string
		Layers []string
	}
	f, err := os.Open(saved)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "manifest.json" {
			if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
				t.Fatal(err)
			}
			continue
		}
		hash := sha256.New()
		io.Copy(hash, tr)
		blobs[h.Name] = hex.EncodeToString(hash.Sum(nil))
	}
	f.Close()
	if len(manifest) != 1 {
		t.Fatalf("manifest.json has %d entries", len(manifest))
	}
	var inspect []struct{ RootFS struct{ Layers []string } }
	if err := json.Unmarshal([]byte(strata(t, root, "image", "inspect", "app:1")), &inspect); err != nil {
		t.Fatal(err)
	}
	diffIDs := inspect[0].RootFS.Layers
	if len(manifest[0].Layers) != len(diffIDs) {
		t.Fatalf("%d layers saved, config names %d", len(manifest[0].Layers), len(diffIDs))
	}
	for i, p := range manifest[0].Layers {
		if "sha256:"+blobs[p] != diffIDs[i] {
			t.Errorf("saved layer %s has sha256 %s, config diff_id %s", p, blobs[p], diffIDs[i])
		}
	}
	for _, name := range []string{"index.json", "oci-layout", "repositories"} {
		if _, ok := blobs[name]; !ok {
			t.Errorf("saved archive lacks %s", name)
		}
	}

	before := strata(t, root, "images", "-a", "--no-trunc") + strata(t, root, "images", "--tree")
	strata(t, root, "load", "-i", saved)
	if after := strata(t, root, "images", "-a", "--no-trunc") + strata(t, root, "images", "--tree"); after != before {
		t.Fatalf("loading the saved archive changed the store:\n%s\nthen\n%s", before, after)
	}

	d := startDockerd(t)
	if _, err := d.run("load", "-i", saved); err != nil {
		t.Fatal(err)
	}
	got, err := d.run("image", "inspect", "-f", "{{.Id}}", "app:1")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSpace(strata(t, root, "image", "inspect", "app:1"))
	if !strings.Contains(want, strings.TrimSpace(got)) {
		t.Fatalf("docker loaded strata's archive as %s, not the image strata saved", got)
	}
}
