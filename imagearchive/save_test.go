package imagearchive

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/store"
)

func save(t *testing.T, s *store.Store, refs ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Save(context.Background(), s, &buf, refs, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// loadTwoImages loads two images sharing a base layer, one tagged twice.
func loadTwoImages(t *testing.T, s *store.Store) (app, tool []byte) {
	base, appTop, toolTop := layerTar(t, "save-base"), layerTar(t, "save-app"), layerTar(t, "save-tool")
	app = imageConfig(t, "app", base, appTop)
	tool = imageConfig(t, "tool", base, toolTop)
	mustLoad(t, s, writeArchive(t, makeTar(t, dockerImage(t, app, [][]byte{base, gzipped(t, appTop)}, "app:1", "app:latest")...)))
	mustLoad(t, s, writeArchive(t, makeTar(t, ociImage(t, tool, [][]byte{zstded(t, base), toolTop},
		map[string]string{annotationImageName: "example.com/tool:2"})...)))
	return app, tool
}

func TestSaveLayout(t *testing.T) {
	s := openStore(t)
	app, tool := loadTwoImages(t, s)
	out := save(t, s, "app:1", "app:latest", "example.com/tool:2", "app")
	files, names := readTar(t, out)

	if names[0] != "blobs/" || names[1] != "blobs/sha256/" {
		t.Errorf("first entries %v, want the blobs/ directories", names[:2])
	}
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			t.Errorf("%s written twice", n)
		}
		seen[n] = true
	}
	for name, data := range files {
		if len(name) > len("blobs/sha256/") && name[:len("blobs/sha256/")] == "blobs/sha256/" {
			if d := digest.FromBytes(data); "blobs/sha256/"+d.Encoded() != name {
				t.Errorf("blob %s has digest %s", name, d)
			}
		}
	}
	// 3 layers, 2 configs, 2 manifests, index.json, oci-layout, manifest.json, repositories
	if len(files) != 11 {
		t.Errorf("%d files, want 11: %v", len(files), names)
	}

	var items []manifestItem
	if err := json.Unmarshal(files["manifest.json"], &items); err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || !slices.Equal(items[0].RepoTags, []string{"app:1", "app:latest"}) || !slices.Equal(items[1].RepoTags, []string{"example.com/tool:2"}) {
		t.Errorf("manifest.json %s", files["manifest.json"])
	}
	for i, config := range [][]byte{app, tool} {
		if items[i].Config != blobFile(config).name || !bytes.Equal(files[items[i].Config], config) {
			t.Errorf("image %d: config %s differs from the one loaded", i, items[i].Config)
		}
		var spec ocispec.Image
		json.Unmarshal(config, &spec)
		for j, diffID := range spec.RootFS.DiffIDs {
			if items[i].Layers[j] != "blobs/sha256/"+diffID.Encoded() || files[items[i].Layers[j]] == nil {
				t.Errorf("image %d layer %d: %s, want the blob of diff ID %s", i, j, items[i].Layers[j], diffID)
			}
		}
	}

	var idx ocispec.Index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, d := range idx.Manifests {
		refs = append(refs, d.Annotations[annotationImageName]+" "+d.Annotations[ocispec.AnnotationRefName])
		var m ocispec.Manifest
		if err := json.Unmarshal(files["blobs/sha256/"+d.Digest.Encoded()], &m); err != nil {
			t.Fatal(err)
		}
		for _, l := range m.Layers {
			if l.MediaType != ocispec.MediaTypeImageLayer || int64(len(files["blobs/sha256/"+l.Digest.Encoded()])) != l.Size {
				t.Errorf("manifest %s: layer %+v", d.Digest, l)
			}
		}
		if m.Config.MediaType != ocispec.MediaTypeImageConfig {
			t.Errorf("config media type %s", m.Config.MediaType)
		}
	}
	want := []string{"docker.io/library/app:1 1", "docker.io/library/app:latest latest", "example.com/tool:2 2"}
	if !slices.Equal(refs, want) {
		t.Errorf("index.json refs %v, want %v", refs, want)
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %s", files["oci-layout"])
	}
	var repos map[string]map[string]string
	json.Unmarshal(files["repositories"], &repos)
	var appSpec ocispec.Image
	json.Unmarshal(app, &appSpec)
	if repos["app"]["latest"] != appSpec.RootFS.DiffIDs[1].Encoded() || repos["example.com/tool"]["2"] == "" {
		t.Errorf("repositories %s", files["repositories"])
	}
}

func TestSaveRoundTrip(t *testing.T) {
	s := openStore(t)
	loadTwoImages(t, s)
	out := save(t, s, "app:1", "app:latest", "example.com/tool:2")

	// Loading the saved archive again is a no-op.
	before := storeState(t, s)
	loaded := mustLoad(t, s, writeArchive(t, out))
	if after := storeState(t, s); !slices.Equal(before, after) {
		t.Errorf("loading the saved archive changed the store:\n%v\n%v", before, after)
	}
	if len(loaded) != 2 || !slices.Equal(loaded[0].RepoTags, []string{"app:1", "app:latest"}) {
		t.Errorf("loaded %v", loaded)
	}

	// A fresh store gives back the same bytes.
	fresh := openStore(t)
	mustLoad(t, fresh, writeArchive(t, out))
	if again := save(t, fresh, "app:1", "app:latest", "example.com/tool:2"); !bytes.Equal(out, again) {
		t.Error("saving from a fresh store gives different bytes")
	}

	// So does its OCI layout alone.
	files, _ := readTar(t, out)
	var oci []file
	for name, data := range files {
		if name != "manifest.json" && name != "repositories" {
			oci = append(oci, file{name: name, data: data})
		}
	}
	slices.SortFunc(oci, func(a, b file) int { return bytes.Compare([]byte(a.name), []byte(b.name)) })
	fromOCI := openStore(t)
	mustLoad(t, fromOCI, writeArchive(t, makeTar(t, oci...)))
	if again := save(t, fromOCI, "app:1", "app:latest", "example.com/tool:2"); !bytes.Equal(out, again) {
		t.Error("saving what the OCI layout loaded gives different bytes")
	}
}

func TestSaveByID(t *testing.T) {
	s := openStore(t)
	app, _ := loadTwoImages(t, s)
	out := save(t, s, digest.FromBytes(app).String())
	files, _ := readTar(t, out)
	var items []manifestItem
	json.Unmarshal(files["manifest.json"], &items)
	if len(items) != 1 || len(items[0].RepoTags) != 0 {
		t.Errorf("manifest.json %s, want one untagged image", files["manifest.json"])
	}
	if _, ok := files["repositories"]; ok {
		t.Error("repositories written for an untagged image")
	}
	var idx ocispec.Index
	json.Unmarshal(files["index.json"], &idx)
	if len(idx.Manifests) != 1 || idx.Manifests[0].Annotations != nil {
		t.Errorf("index.json %s", files["index.json"])
	}
}
