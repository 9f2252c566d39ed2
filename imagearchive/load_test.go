package imagearchive

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/store"
)

func mustLoad(t *testing.T, s *store.Store, r io.Reader) []Loaded {
	t.Helper()
	loaded, err := Load(context.Background(), s, r, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return loaded
}

// checkImage checks that the store holds config under tags, with its layers.
func checkImage(t *testing.T, s *store.Store, config []byte, tags ...string) {
	t.Helper()
	id := digest.FromBytes(config)
	img, err := s.Images().Get(id)
	if err != nil {
		t.Fatalf("image %s: %v", id, err)
	}
	if string(img.Config) != string(config) {
		t.Errorf("image %s: config changed:\n%s\nwant\n%s", id, img.Config, config)
	}
	for _, tag := range tags {
		if r, err := s.Images().Resolve(tag); err != nil || r.ID != id {
			t.Errorf("tag %s: resolves to %s, %v; want %s", tag, r.ID, err, id)
		}
	}
	if _, err := s.Layers().Get(layer.ChainID(img.DiffIDs())); err != nil {
		t.Errorf("image %s: top layer: %v", id, err)
	}
}

func TestLoadDockerManifest(t *testing.T) {
	s := openStore(t)
	l1, l2 := layerTar(t, "docker-base"), layerTar(t, "docker-top")
	config := imageConfig(t, "docker", l1, l2)
	loaded := mustLoad(t, s, writeArchive(t, makeTar(t, dockerImage(t, config, [][]byte{l1, l2}, "app:1", "app:latest")...)))
	want := []Loaded{{ID: digest.FromBytes(config), RepoTags: []string{"app:1", "app:latest"}}}
	if !slices.EqualFunc(loaded, want, func(a, b Loaded) bool { return a.ID == b.ID && slices.Equal(a.RepoTags, b.RepoTags) }) {
		t.Errorf("loaded %v, want %v", loaded, want)
	}
	checkImage(t, s, config, "app:1", "app")
}

func TestLoadDockerBlobsAndParent(t *testing.T) {
	s := openStore(t)
	base := layerTar(t, "parent-base")
	top := layerTar(t, "parent-top")
	parentConfig := imageConfig(t, "parent", base)
	childConfig := imageConfig(t, "child", base, top)
	files := []file{blobFile(base), blobFile(top), blobFile(parentConfig), blobFile(childConfig)}
	// The child comes first: its parent is created by the same load.
	items := []manifestItem{
		{Config: blobFile(childConfig).name, RepoTags: []string{"child:1"}, Layers: []string{blobFile(base).name, blobFile(top).name},
			Parent: digest.FromBytes(parentConfig)},
		{Config: blobFile(parentConfig).name, RepoTags: []string{"parent:1"}, Layers: []string{blobFile(base).name}},
	}
	files = append(files, file{name: "manifest.json", data: mustJSON(t, items)})
	if got := mustLoad(t, s, writeArchive(t, makeTar(t, files...))); len(got) != 2 {
		t.Fatalf("loaded %v, want 2 images", got)
	}
	checkImage(t, s, parentConfig, "parent:1")
	checkImage(t, s, childConfig, "child:1")
	child, err := s.Images().Get(digest.FromBytes(childConfig))
	if err != nil {
		t.Fatal(err)
	}
	if child.Parent != digest.FromBytes(parentConfig) {
		t.Errorf("child's parent is %q, want %s", child.Parent, digest.FromBytes(parentConfig))
	}

	// Saved together, the child names its parent again.
	saved, _ := readTar(t, save(t, s, "parent:1", "child:1"))
	var out []manifestItem
	if err := json.Unmarshal(saved["manifest.json"], &out); err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].Parent != "" || out[1].Parent != digest.FromBytes(parentConfig) {
		t.Errorf("saved manifest.json %s", saved["manifest.json"])
	}
}

func TestLoadOCICompressions(t *testing.T) {
	s := openStore(t)
	plain, gz, zst := layerTar(t, "oci-plain"), layerTar(t, "oci-gzip"), layerTar(t, "oci-zstd")
	config := imageConfig(t, "oci", plain, gz, zst)
	files := ociImage(t, config, [][]byte{plain, gzipped(t, gz), zstded(t, zst)},
		map[string]string{ocispec.AnnotationRefName: "oci:2"})
	loaded := mustLoad(t, s, writeArchive(t, makeTar(t, files...)))
	if len(loaded) != 1 || !slices.Equal(loaded[0].RepoTags, []string{"oci:2"}) {
		t.Errorf("loaded %v, want oci:2", loaded)
	}
	checkImage(t, s, config, "oci:2")
}

func TestLoadOCIRefNames(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		want        []string
	}{
		{"bare tag", map[string]string{ocispec.AnnotationRefName: "1"}, nil},
		{"containerd name", map[string]string{ocispec.AnnotationRefName: "1", annotationImageName: "docker.io/library/named:1"}, []string{"named:1"}},
		{"full ref name", map[string]string{ocispec.AnnotationRefName: "example.com/x/y:2"}, []string{"example.com/x/y:2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			l := layerTar(t, "refname")
			config := imageConfig(t, "refname", l)
			loaded := mustLoad(t, s, writeArchive(t, makeTar(t, ociImage(t, config, [][]byte{l}, tc.annotations)...)))
			if len(loaded) != 1 || !slices.Equal(loaded[0].RepoTags, tc.want) {
				t.Errorf("loaded %v, want tags %v", loaded, tc.want)
			}
			checkImage(t, s, config, tc.want...)
		})
	}
}

func TestLoadOCINestedIndex(t *testing.T) {
	s := openStore(t)
	mine, other := layerTar(t, "platform-mine"), layerTar(t, "platform-other")
	mineConfig, otherConfig := imageConfig(t, "mine", mine), imageConfig(t, "other", other)
	var files []file
	var platforms []ocispec.Descriptor
	for _, p := range []struct {
		arch   string
		config []byte
		layer  []byte
	}{{"some-other-arch", otherConfig, other}, {runtime.GOARCH, mineConfig, mine}} {
		m := ocispec.Manifest{Config: descriptor(ocispec.MediaTypeImageConfig, p.config),
			Layers: []ocispec.Descriptor{descriptor(ocispec.MediaTypeImageLayer, p.layer)}}
		m.SchemaVersion = 2
		mb := mustJSON(t, m)
		d := descriptor(ocispec.MediaTypeImageManifest, mb)
		d.Platform = &ocispec.Platform{OS: "linux", Architecture: p.arch}
		platforms = append(platforms, d)
		files = append(files, blobFile(p.config), blobFile(p.layer), blobFile(mb))
	}
	inner := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: platforms}
	inner.SchemaVersion = 2
	ib := mustJSON(t, inner)
	d := descriptor(ocispec.MediaTypeImageIndex, ib)
	d.Annotations = map[string]string{annotationImageName: "multi:1"}
	outer := ocispec.Index{Manifests: []ocispec.Descriptor{d}}
	outer.SchemaVersion = 2
	files = append(files, blobFile(ib), file{name: "index.json", data: mustJSON(t, outer)}, file{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)})

	loaded := mustLoad(t, s, writeArchive(t, makeTar(t, files...)))
	if len(loaded) != 1 || loaded[0].ID != digest.FromBytes(mineConfig) {
		t.Fatalf("loaded %v, want the %s image %s", loaded, runtime.GOARCH, digest.FromBytes(mineConfig))
	}
	checkImage(t, s, mineConfig, "multi:1")
	if _, err := s.Images().Get(digest.FromBytes(otherConfig)); err == nil {
		t.Error("the image of another architecture was loaded")
	}
}

func TestLoadV1(t *testing.T) {
	s := openStore(t)
	base, top := layerTar(t, "v1-base"), layerTar(t, "v1-top")
	baseID, topID := digest.FromString("v1 base").Encoded(), digest.FromString("v1 top").Encoded()
	topJSON := `{"id":"` + topID + `","parent":"` + baseID + `","created":"2014-10-01T10:00:00Z",` +
		`"container_config":{"Cmd":["/bin/sh","-c","echo hi"]},"config":{"Cmd":["/bin/sh"],"Env":["A=1"]},` +
		`"docker_version":"1.4.0","architecture":"amd64","os":"linux","Size":42,"checksum":"tarsum+sha256:00"}`
	baseJSON := `{"id":"` + baseID + `","created":"2014-09-01T10:00:00Z","container_config":{"Cmd":null},"os":"linux","Size":0}`
	archive := makeTar(t,
		file{name: baseID + "/"}, file{name: baseID + "/VERSION", data: []byte("1.0")},
		file{name: baseID + "/json", data: []byte(baseJSON)}, file{name: baseID + "/layer.tar", data: base},
		file{name: topID + "/"}, file{name: topID + "/VERSION", data: []byte("1.0")},
		file{name: topID + "/json", data: []byte(topJSON)}, file{name: topID + "/layer.tar", data: top},
		file{name: "repositories", data: []byte(`{"seed":{"v1":"` + topID + `"}}`)},
	)
	loaded := mustLoad(t, s, writeArchive(t, archive))
	if len(loaded) != 1 || !slices.Equal(loaded[0].RepoTags, []string{"seed:v1"}) {
		t.Fatalf("loaded %v, want seed:v1", loaded)
	}
	img, err := s.Images().Get(loaded[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := []digest.Digest{digest.FromBytes(base), digest.FromBytes(top)}; !slices.Equal(img.DiffIDs(), want) {
		t.Errorf("diff IDs %v, want %v", img.DiffIDs(), want)
	}
	if len(img.Spec.History) != 2 || img.Spec.History[1].CreatedBy != "/bin/sh -c echo hi" {
		t.Errorf("history %+v", img.Spec.History)
	}
	if img.Spec.Architecture != "amd64" || img.Spec.OS != "linux" || !slices.Equal(img.Spec.Config.Env, []string{"A=1"}) {
		t.Errorf("config %+v", img.Spec)
	}
	var raw map[string]json.RawMessage
	json.Unmarshal(img.Config, &raw)
	for _, k := range []string{"id", "parent", "Size", "checksum"} {
		if _, ok := raw[k]; ok {
			t.Errorf("config keeps the v1 key %q", k)
		}
	}
	checkImage(t, s, img.Config, "seed:v1")

	// Loading it again changes nothing.
	before := storeState(t, s)
	again := mustLoad(t, s, writeArchive(t, archive))
	if again[0].ID != loaded[0].ID {
		t.Errorf("second load gives image %s, first %s", again[0].ID, loaded[0].ID)
	}
	if after := storeState(t, s); !slices.Equal(before, after) {
		t.Errorf("second load changed the store:\n%v\n%v", before, after)
	}
}

func TestLoadStdin(t *testing.T) {
	s := openStore(t)
	l := layerTar(t, "stdin")
	config := imageConfig(t, "stdin", l)
	data := makeTar(t, ociImage(t, config, [][]byte{gzipped(t, l)}, map[string]string{ocispec.AnnotationRefName: "piped:1"})...)
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeAll(pw, data)) }()
	mustLoad(t, s, pr)
	checkImage(t, s, config, "piped:1")
	if entries, _ := os.ReadDir(filepath.Join(s.Root(), "tmp")); len(entries) != 0 {
		t.Errorf("spool files left: %v", entries)
	}
}

// TestLoadStdinSpoolsToDisk loads a stream bigger than the memory spool
// allows: what was spooled in memory moves to a file, and the load works.
func TestLoadStdinSpoolsToDisk(t *testing.T) {
	defer func(n int64) { spoolInMemory = n }(spoolInMemory)
	spoolInMemory = 4096
	s := openStore(t)
	l := layerTar(t, "overflow")
	config := imageConfig(t, "overflow", l)
	data := makeTar(t, ociImage(t, config, [][]byte{gzipped(t, l)}, map[string]string{ocispec.AnnotationRefName: "spooled:1"})...)
	if len(data) <= int(spoolInMemory) {
		t.Fatalf("the archive (%d bytes) fits the memory spool", len(data))
	}
	pr, pw := io.Pipe()
	go func() {
		for b := data; len(b) > 0; b = b[min(1000, len(b)):] { // in pieces, across the limit
			if _, err := pw.Write(b[:min(1000, len(b))]); err != nil {
				return
			}
		}
		pw.Close()
	}()
	mustLoad(t, s, pr)
	checkImage(t, s, config, "spooled:1")
	if entries, _ := os.ReadDir(filepath.Join(s.Root(), "tmp")); len(entries) != 0 {
		t.Errorf("spool files left: %v", entries)
	}
}

func writeAll(w io.Writer, data []byte) error {
	_, err := w.Write(data)
	return err
}

func TestLoadDirectory(t *testing.T) {
	s := openStore(t)
	l := layerTar(t, "directory")
	config := imageConfig(t, "directory", l)
	dir := t.TempDir()
	for _, f := range ociImage(t, config, [][]byte{zstded(t, l)}, map[string]string{ocispec.AnnotationRefName: "dir:1"}) {
		p := filepath.Join(dir, f.name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	mustLoad(t, s, d)
	checkImage(t, s, config, "dir:1")
}

// TestLoadCorrupt loads broken archives into a store holding an image and
// checks that each fails and leaves the store as it was.
func TestLoadCorrupt(t *testing.T) {
	s := openStore(t)
	good := layerTar(t, "present")
	goodConfig := imageConfig(t, "present", good)
	mustLoad(t, s, writeArchive(t, makeTar(t, dockerImage(t, goodConfig, [][]byte{good}, "present:1")...)))

	// Each case gets layers of its own, absent from the store.
	okOCI := func(seed string) (config []byte, files []file) {
		l1, l2 := layerTar(t, seed+"-1"), layerTar(t, seed+"-2")
		config = imageConfig(t, seed, l1, l2)
		return config, ociImage(t, config, [][]byte{gzipped(t, l1), l2}, map[string]string{ocispec.AnnotationRefName: "bad:1"})
	}
	replace := func(files []file, name string, data []byte) []file {
		out := slices.Clone(files)
		for i := range out {
			if out[i].name == name {
				out[i].data = data
			}
		}
		return out
	}
	cases := []struct {
		name  string
		build func() []byte
		want  error // nil: any error
	}{
		{"wrong layer digest", func() []byte {
			_, files := okOCI("digest")
			// The second layer blob keeps its name but changes content, same size.
			l2 := layerTar(t, "digest-2")
			bad := layerTar(t, "digest-X")
			return makeTar(t, replace(files, blobFile(l2).name, bad)...)
		}, errdefs.ErrInvalid},
		{"wrong size", func() []byte {
			config, _ := okOCI("size")
			l1, l2 := layerTar(t, "size-1"), layerTar(t, "size-2")
			m := ocispec.Manifest{Config: descriptor(ocispec.MediaTypeImageConfig, config), Layers: []ocispec.Descriptor{
				descriptor(ocispec.MediaTypeImageLayer, l1), descriptor(ocispec.MediaTypeImageLayer, l2)}}
			m.Layers[1].Size++
			m.SchemaVersion = 2
			mb := mustJSON(t, m)
			idx := ocispec.Index{Manifests: []ocispec.Descriptor{descriptor(ocispec.MediaTypeImageManifest, mb)}}
			idx.SchemaVersion = 2
			return makeTar(t, blobFile(config), blobFile(l1), blobFile(l2), blobFile(mb), file{name: "index.json", data: mustJSON(t, idx)})
		}, errdefs.ErrInvalid},
		{"wrong diff ID", func() []byte {
			l1, l2 := layerTar(t, "diffid-1"), layerTar(t, "diffid-2")
			config := imageConfig(t, "diffid", l1, layerTar(t, "diffid-other"))
			return makeTar(t, dockerImage(t, config, [][]byte{l1, l2}, "bad:1")...)
		}, errdefs.ErrInvalid},
		{"second image broken", func() []byte {
			// The first image's layers are all registered before the second fails.
			l1, l2 := layerTar(t, "second-1"), layerTar(t, "second-2")
			first, second := imageConfig(t, "first", l1), imageConfig(t, "second", l1, layerTar(t, "second-other"))
			items := []manifestItem{
				{Config: blobFile(first).name, Layers: []string{blobFile(l1).name}},
				{Config: blobFile(second).name, Layers: []string{blobFile(l1).name, blobFile(l2).name}},
			}
			return makeTar(t, blobFile(first), blobFile(second), blobFile(l1), blobFile(l2), file{name: "manifest.json", data: mustJSON(t, items)})
		}, errdefs.ErrInvalid},
		{"truncated", func() []byte {
			_, files := okOCI("truncated")
			data := makeTar(t, files...)
			return data[:len(data)/2]
		}, errdefs.ErrInvalid},
		{"missing blob", func() []byte {
			_, files := okOCI("missing")
			l2 := layerTar(t, "missing-2")
			return makeTar(t, slices.DeleteFunc(files, func(f file) bool { return f.name == blobFile(l2).name })...)
		}, errdefs.ErrInvalid},
		{"layer outside the archive", func() []byte {
			l := layerTar(t, "outside")
			config := imageConfig(t, "outside", l)
			items := []manifestItem{{Config: blobFile(config).name, Layers: []string{"../x"}}}
			return makeTar(t, blobFile(config), blobFile(l), file{name: "manifest.json", data: mustJSON(t, items)})
		}, errdefs.ErrInvalid},
		{"entry outside the archive", func() []byte {
			_, files := okOCI("entry")
			return makeTar(t, append(files, file{name: "../evil", data: []byte("x")})...)
		}, errdefs.ErrInvalid},
		{"wrong config digest", func() []byte {
			l := layerTar(t, "config")
			config := imageConfig(t, "config", l)
			items := []manifestItem{{Config: "blobs/sha256/" + digest.FromString("other").Encoded(), Layers: []string{blobFile(l).name}}}
			return makeTar(t, file{name: "blobs/sha256/" + digest.FromString("other").Encoded(), data: config}, blobFile(l),
				file{name: "manifest.json", data: mustJSON(t, items)})
		}, errdefs.ErrInvalid},
		{"malformed manifest.json", func() []byte {
			return makeTar(t, file{name: "manifest.json", data: []byte(`[{"Config":`)})
		}, errdefs.ErrInvalid},
		{"malformed index.json", func() []byte {
			_, files := okOCI("index")
			return makeTar(t, replace(files, "index.json", []byte(`{"manifests":[`))...)
		}, errdefs.ErrInvalid},
		{"no image archive", func() []byte {
			return makeTar(t, file{name: "hello.txt", data: []byte("hi")})
		}, errdefs.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := storeState(t, s)
			_, err := Load(context.Background(), s, writeArchive(t, tc.build()), LoadOptions{})
			if err == nil {
				t.Fatal("load succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %q is not %v", err, tc.want)
			}
			t.Logf("error: %v", err)
			if after := storeState(t, s); !slices.Equal(before, after) {
				t.Errorf("store changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}
