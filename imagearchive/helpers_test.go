package imagearchive

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	_ "github.com/strata-storage/strata/driver/vfs"
	"github.com/strata-storage/strata/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the vfs driver keeps owners: needs root")
	}
	s, err := store.Open(store.Options{Root: t.TempDir(), Driver: "vfs"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// file is one entry of a tar built by a test.
type file struct {
	name string
	data []byte
}

func makeTar(t *testing.T, files ...file) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}
		if strings.HasSuffix(f.name, "/") {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerTar is a small layer whose content is unique to seed.
func layerTar(t *testing.T, seed string) []byte {
	return makeTar(t,
		file{name: "etc/"},
		file{name: "etc/" + seed, data: []byte("content of " + seed + "\n")},
	)
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

// imageConfig is a config for layers given uncompressed.
func imageConfig(t *testing.T, cmd string, layers ...[]byte) []byte {
	created := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	img := ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		Config:   ocispec.ImageConfig{Cmd: []string{cmd}},
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	for _, l := range layers {
		img.RootFS.DiffIDs = append(img.RootFS.DiffIDs, digest.FromBytes(l))
		img.History = append(img.History, ocispec.History{Created: &created, CreatedBy: "test"})
	}
	b, err := json.Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func blobFile(data []byte) file {
	return file{name: "blobs/sha256/" + digest.FromBytes(data).Encoded(), data: data}
}

func descriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// ociImage is the files of an OCI layout holding one image; blobs are the
// layers as stored (compressed or not), configured by config.
func ociImage(t *testing.T, config []byte, blobs [][]byte, annotations map[string]string) []file {
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    descriptor(ocispec.MediaTypeImageConfig, config),
	}
	m.SchemaVersion = 2
	files := []file{{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)}, blobFile(config)}
	for _, b := range blobs {
		m.Layers = append(m.Layers, descriptor(ocispec.MediaTypeImageLayerGzip, b))
		files = append(files, blobFile(b))
	}
	mb := mustJSON(t, m)
	files = append(files, blobFile(mb))
	d := descriptor(ocispec.MediaTypeImageManifest, mb)
	d.Annotations = annotations
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{d}}
	idx.SchemaVersion = 2
	return append(files, file{name: "index.json", data: mustJSON(t, idx)})
}

// dockerImage is the files of a Docker 1.10 archive of one image, in the
// layout of Docker before 25: "<id>/layer.tar" and "<id>.json".
func dockerImage(t *testing.T, config []byte, layers [][]byte, tags ...string) []file {
	id := digest.FromBytes(config).Encoded()
	files := []file{{name: id + ".json", data: config}}
	item := manifestItem{Config: id + ".json", RepoTags: tags}
	for i, l := range layers {
		dir := digest.FromString(fmt.Sprint(id, i)).Encoded()
		files = append(files, file{name: dir + "/"}, file{name: dir + "/layer.tar", data: l})
		item.Layers = append(item.Layers, dir+"/layer.tar")
	}
	return append(files, file{name: "manifest.json", data: mustJSON(t, []manifestItem{item})})
}

// writeArchive writes a tar of files to a file and opens it.
func writeArchive(t *testing.T, data []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "archive.tar")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// storeState lists a store's images with their tags and its layers.
func storeState(t *testing.T, s *store.Store) []string {
	t.Helper()
	imgs, err := s.Images().List()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := s.Layers().List()
	if err != nil {
		t.Fatal(err)
	}
	var state []string
	for _, img := range imgs {
		tags := slices.Clone(img.RepoTags)
		slices.Sort(tags)
		state = append(state, fmt.Sprintf("image %s %v parent=%s", img.ID, tags, img.Parent))
	}
	for _, l := range layers {
		state = append(state, fmt.Sprintf("layer %s %s", l.ChainID, l.CacheID))
	}
	slices.Sort(state)
	return state
}

// readTar returns the regular files of a tar by name, and the names in order.
func readTar(t *testing.T, data []byte) (map[string][]byte, []string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	files := make(map[string][]byte)
	var names []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if hdr.Typeflag == tar.TypeReg {
			b := new(bytes.Buffer)
			b.ReadFrom(tr)
			files[hdr.Name] = b.Bytes()
		}
	}
	return files, names
}
