package daemon

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/store"
)

// apiDaemon is a daemon on a fresh vfs store, called without a socket.
type apiDaemon struct {
	s *store.Store
	h http.Handler
}

func newAPIDaemon(t *testing.T) apiDaemon {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: the vfs driver keeps file owners")
	}
	s, err := store.Open(store.Options{Root: t.TempDir(), Driver: "vfs"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return apiDaemon{s: s, h: New(s, slog.New(slog.DiscardHandler)).Handler()}
}

func (d apiDaemon) call(t *testing.T, method, path string, body io.Reader) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	d.h.ServeHTTP(w, httptest.NewRequest(method, path, body))
	return w
}

// decode checks the status of w and decodes its JSON body into v.
func decode(t *testing.T, w *httptest.ResponseRecorder, status int, v any) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %s", w.Code, status, w.Body)
	}
	if v == nil {
		return
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatalf("body %s: %v", w.Body, err)
	}
}

// apiError checks that w is an Engine API error the CLI prints: the status,
// Content-Type exactly application/json, {"message": message}.
func apiError(t *testing.T, w *httptest.ResponseRecorder, status int, message string) {
	t.Helper()
	var e struct{ Message string }
	decode(t, w, status, &e)
	if e.Message != message {
		t.Fatalf("message %q, want %q", e.Message, message)
	}
}

// testImage is one image of an archive built by testArchive.
type testImage struct {
	tags   []string
	layers [][]byte // uncompressed layer tars
	labels map[string]string
	at     time.Time // created
}

// layer is a layer tar holding one file, its content unique to name.
func layerOf(t *testing.T, name string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	data := "content of " + name + "\n"
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/" + name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))},
	} {
		h.ModTime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	io.WriteString(tw, data)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// config is the image config of img.
func (img testImage) config(t *testing.T) []byte {
	t.Helper()
	at := img.at
	if at.IsZero() {
		at = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	}
	c := ocispec.Image{
		Created:  &at,
		Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		Config:   ocispec.ImageConfig{Cmd: []string{"/bin/sh"}, Labels: img.labels},
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	for i, l := range img.layers {
		c.RootFS.DiffIDs = append(c.RootFS.DiffIDs, digest.FromBytes(l))
		c.History = append(c.History, ocispec.History{Created: &at, CreatedBy: fmt.Sprint("step ", i)})
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testArchive is a docker save archive (manifest.json layout) of images.
func testArchive(t *testing.T, images ...testImage) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	type item struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	var manifest []item
	written := map[string]bool{}
	for _, img := range images {
		cfg := img.config(t)
		it := item{Config: digest.FromBytes(cfg).Encoded() + ".json", RepoTags: img.tags}
		add(it.Config, cfg)
		for _, l := range img.layers {
			name := digest.FromBytes(l).Encoded() + "/layer.tar"
			if !written[name] {
				add(name, l)
				written[name] = true
			}
			it.Layers = append(it.Layers, name)
		}
		manifest = append(manifest, it)
	}
	b, err := json.Marshal(manifest)
	if err != nil {
		t.Fatal(err)
	}
	add("manifest.json", b)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// load loads images through the API, quietly.
func (d apiDaemon) load(t *testing.T, images ...testImage) {
	t.Helper()
	w := d.call(t, "POST", "/v1.50/images/load?quiet=1", bytes.NewReader(testArchive(t, images...)))
	if w.Code != http.StatusOK || strings.Contains(w.Body.String(), "error") {
		t.Fatalf("load: %d %s", w.Code, w.Body)
	}
}

func TestRouteMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, path string
		want          map[string]string // nil: no match
	}{
		{"/images/{name...}/json", "/images/busybox/json", map[string]string{"name": "busybox"}},
		{"/images/{name...}/json", "/images/localhost:5000/foo/bar:tag/json", map[string]string{"name": "localhost:5000/foo/bar:tag"}},
		{"/images/{name...}/json", "/images/a/b@sha256:" + strings.Repeat("a", 64) + "/json", map[string]string{"name": "a/b@sha256:" + strings.Repeat("a", 64)}},
		{"/images/{name...}/json", "/images/json/json", map[string]string{"name": "json"}},
		{"/images/{name...}/json", "/images/json", nil},
		{"/images/{name...}/json", "/images/a/history", nil},
		{"/images/{name...}", "/images/docker.io/library/busybox:latest", map[string]string{"name": "docker.io/library/busybox:latest"}},
		{"/containers/{name}/json", "/containers/web/json", map[string]string{"name": "web"}},
		{"/containers/{name}/json", "/containers/a/b/json", nil},
		{"/containers/{name}", "/containers/", nil},
		{"/version", "/version", map[string]string{}},
		{"/version", "/versions", nil},
	} {
		got, ok := route{path: c.pattern}.match(strings.Split(strings.Trim(c.path, "/"), "/"))
		if ok != (c.want != nil) || ok && fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s on %s: %v %v, want %v", c.pattern, c.path, got, ok, c.want)
		}
	}
}

func TestVersionPrefix(t *testing.T) {
	d := newAPIDaemon(t)
	apiError(t, d.call(t, "GET", "/v1.23/version", nil), http.StatusBadRequest,
		"client version 1.23 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version")
	apiError(t, d.call(t, "GET", "/v1.51/version", nil), http.StatusBadRequest,
		"client version 1.51 is too new. Maximum supported API version is 1.50")
	for _, p := range []string{"/v1.24/version", "/v1.50/version", "/version", "/v1.9/_ping"} {
		w := d.call(t, "GET", p, nil)
		if p == "/v1.9/_ping" { // 1.9 < 1.24 as numbers, not as strings
			apiError(t, w, http.StatusBadRequest, "client version 1.9 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version")
			continue
		}
		var v struct{ ApiVersion, MinAPIVersion, Os string }
		decode(t, w, http.StatusOK, &v)
		if v.ApiVersion != "1.50" || v.MinAPIVersion != "1.24" || v.Os != "linux" {
			t.Errorf("%s: %+v", p, v)
		}
	}
	// The version reaches handlers: images list VirtualSize only before 1.44.
	d.load(t, testImage{tags: []string{"a:1"}, layers: [][]byte{layerOf(t, "a")}})
	for v, want := range map[string]bool{"1.43": true, "1.44": false, "1.50": false} {
		var imgs []map[string]any
		decode(t, d.call(t, "GET", "/v"+v+"/images/json", nil), http.StatusOK, &imgs)
		if _, has := imgs[0]["VirtualSize"]; has != want {
			t.Errorf("API %s: VirtualSize present %v, want %v", v, has, want)
		}
	}
}

func TestErrorShapes(t *testing.T) {
	d := newAPIDaemon(t)
	apiError(t, d.call(t, "GET", "/v1.50/nosuch", nil), http.StatusNotFound, "page not found")
	apiError(t, d.call(t, "PUT", "/v1.50/version", nil), http.StatusNotFound, "page not found")
	apiError(t, d.call(t, "GET", "/v1.50/images/nosuch/json", nil), http.StatusNotFound, "No such image: nosuch:latest")
	apiError(t, d.call(t, "POST", "/v1.50/images/create?fromImage=busybox&tag=latest", nil), http.StatusNotImplemented,
		"pulling images is not supported by strata yet")
	apiError(t, d.call(t, "GET", `/v1.50/images/json?filters={"nosuch":["x"]}`, nil), http.StatusBadRequest, "invalid filter 'nosuch'")
}

func TestPing(t *testing.T) {
	d := newAPIDaemon(t)
	for _, method := range []string{"HEAD", "GET"} {
		w := d.call(t, method, "/_ping", nil)
		if w.Code != http.StatusOK {
			t.Fatalf("%s /_ping: %d", method, w.Code)
		}
		for k, v := range map[string]string{
			"Api-Version": "1.50", "Ostype": "linux", "Docker-Experimental": "false",
			"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Swarm": "inactive",
		} {
			if got := w.Header().Get(k); got != v {
				t.Errorf("%s /_ping: %s: %q, want %q", method, k, got, v)
			}
		}
		if !strings.HasPrefix(w.Header().Get("Server"), "strata/") {
			t.Errorf("Server: %q", w.Header().Get("Server"))
		}
		want := map[string]string{"HEAD": "", "GET": "OK"}[method]
		if w.Body.String() != want {
			t.Errorf("%s /_ping body %q, want %q", method, w.Body, want)
		}
	}
}

func TestInfo(t *testing.T) {
	d := newAPIDaemon(t)
	d.load(t, testImage{tags: []string{"a:1"}, layers: [][]byte{layerOf(t, "a")}})
	if _, err := d.s.CreateContainer("a:1", container.CreateOptions{Name: "c1"}); err != nil {
		t.Fatal(err)
	}
	var in struct {
		Containers, ContainersRunning, ContainersPaused, ContainersStopped, Images int
		Driver, DockerRootDir, OSType                                              string
		DriverStatus                                                               [][2]string
		Swarm                                                                      struct{ LocalNodeState string }
	}
	decode(t, d.call(t, "GET", "/v1.50/info", nil), http.StatusOK, &in)
	if in.Containers != 1 || in.Containers != in.ContainersRunning+in.ContainersPaused+in.ContainersStopped || in.Images != 1 {
		t.Errorf("counts: %+v", in)
	}
	if in.Driver != "vfs" || in.DockerRootDir != d.s.Root() || in.OSType != "linux" || in.DriverStatus == nil || in.Swarm.LocalNodeState != "inactive" {
		t.Errorf("info: %+v", in)
	}
}

// testDigest is the hex sha256 of b: an image ID without "sha256:".
func testDigest(b []byte) string { return digest.FromBytes(b).Encoded() }

func TestPanicIsInternalError(t *testing.T) {
	d := New(nil, slog.New(slog.DiscardHandler))
	boom := func(http.ResponseWriter, *http.Request, map[string]string) error { panic("boom") }
	err := d.serve(&router{routes: []route{{"GET", "/boom", boom}}}, httptest.NewRecorder(), httptest.NewRequest("GET", "/boom", nil))
	if statusOf(err) != http.StatusInternalServerError || err.Error() != "internal error: boom" {
		t.Fatalf("panicking handler: %v", err)
	}
}
