package daemon

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/container"
)

// summary is the part of an images list entry the tests read.
type summary struct {
	ID          string `json:"Id"`
	RepoTags    []string
	RepoDigests []string
	Size        int64
	SharedSize  int64
	Containers  int64
	Created     int64
}

func (d apiDaemon) list(t *testing.T, query string) []summary {
	t.Helper()
	var out []summary
	decode(t, d.call(t, "GET", "/v1.50/images/json"+query, nil), http.StatusOK, &out)
	return out
}

func tagsOf(list []summary) []string {
	out := []string{}
	for _, s := range list {
		if len(s.RepoTags) == 0 {
			out = append(out, "<none>")
		}
		out = append(out, s.RepoTags...)
	}
	slices.Sort(out)
	return out
}

// streamLines decodes a JSON progress stream.
func streamLines(t *testing.T, body io.Reader) []streamMessage {
	t.Helper()
	var out []streamMessage
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		var m streamMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("stream line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestLoadStream(t *testing.T) {
	d := newAPIDaemon(t)
	archive := testArchive(t,
		testImage{tags: []string{"app:1", "localhost:5000/team/app:2"}, layers: [][]byte{layerOf(t, "a"), layerOf(t, "b")}},
		testImage{layers: [][]byte{layerOf(t, "c")}}) // untagged
	w := d.call(t, "POST", "/v1.50/images/load?quiet=0", bytes.NewReader(archive))
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("load: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	var progress, loaded []string
	for _, m := range streamLines(t, w.Body) {
		switch {
		case m.Error != "":
			t.Fatalf("load error: %s", m.Error)
		case m.Status == "Loading layer":
			if m.ID == "" || m.ProgressDetail == nil {
				t.Fatalf("progress line without id or detail: %+v", m)
			}
			progress = append(progress, m.ID)
		case m.Stream != "":
			loaded = append(loaded, m.Stream)
		}
	}
	if len(progress) < 3 {
		t.Errorf("progress of %d layers, want 3: %v", len(progress), progress)
	}
	slices.Sort(loaded)
	if len(loaded) != 3 || loaded[0] != "Loaded image ID: sha256:"+testDigest(testImage{layers: [][]byte{layerOf(t, "c")}}.config(t))+"\n" ||
		loaded[1] != "Loaded image: app:1\n" || loaded[2] != "Loaded image: localhost:5000/team/app:2\n" {
		t.Errorf("loaded lines: %q", loaded)
	}
}

func TestLoadErrors(t *testing.T) {
	d := newAPIDaemon(t)
	good := layerOf(t, "a")
	bad := testImage{tags: []string{"bad:1"}, layers: [][]byte{good}}
	archive := testArchive(t, bad)
	// The config promises good's diff ID; the archive carries another layer.
	archive = bytes.Replace(archive, []byte("content of a"), []byte("content of b"), 1)

	// Quiet: nothing was sent, so the error is a plain error response.
	w := d.call(t, "POST", "/v1.50/images/load?quiet=1", bytes.NewReader(archive))
	if w.Code < 400 || w.Header().Get("Content-Type") != "application/json" || !strings.Contains(w.Body.String(), `"message"`) {
		t.Fatalf("quiet load of a bad archive: %d %s", w.Code, w.Body)
	}
	// With progress: the error is the stream's last message.
	w = d.call(t, "POST", "/v1.50/images/load", bytes.NewReader(archive))
	lines := streamLines(t, w.Body)
	last := lines[len(lines)-1]
	if w.Code != http.StatusOK || len(lines) < 2 || last.Error == "" || last.ErrorDetail == nil || last.ErrorDetail.Message != last.Error {
		t.Fatalf("load of a bad archive: %d %+v", w.Code, lines)
	}
	// Not an archive at all.
	w = d.call(t, "POST", "/v1.50/images/load", strings.NewReader("not a tar"))
	if w.Code < 400 {
		t.Fatalf("load of garbage: %d %s", w.Code, w.Body)
	}
	if got := d.list(t, ""); len(got) != 0 {
		t.Fatalf("images after failed loads: %+v", got)
	}
}

func TestImageListFilters(t *testing.T) {
	d := newAPIDaemon(t)
	base := layerOf(t, "base")
	d.load(t,
		testImage{tags: []string{"busybox:latest", "busybox:1"}, layers: [][]byte{base}, at: time.Unix(1000, 0)},
		testImage{tags: []string{"localhost:5000/team/app:2"}, layers: [][]byte{base, layerOf(t, "app")},
			labels: map[string]string{"tier": "web"}, at: time.Unix(2000, 0)},
		testImage{layers: [][]byte{layerOf(t, "dangling")}, at: time.Unix(3000, 0)})

	all := d.list(t, "")
	if got := tagsOf(all); !slices.Equal(got, []string{"<none>", "busybox:1", "busybox:latest", "localhost:5000/team/app:2"}) {
		t.Fatalf("all images: %v", got)
	}
	for _, s := range all {
		if s.RepoTags == nil || s.RepoDigests == nil || s.SharedSize != -1 || s.Containers != -1 || s.Size <= 0 {
			t.Errorf("summary %+v", s)
		}
	}
	if all[0].Created != 3000 || all[2].Created != 1000 {
		t.Errorf("not newest first: %+v", all)
	}
	for filter, want := range map[string][]string{
		`{"reference":{"busybox":true}}`:             {"busybox:1", "busybox:latest"},
		`{"reference":["busybox:1"]}`:                {"busybox:1"},
		`{"reference":["localhost:5000/team/*"]}`:    {"localhost:5000/team/app:2"},
		`{"reference":["nosuch"]}`:                   {},
		`{"dangling":["true"]}`:                      {"<none>"},
		`{"dangling":{"false":true}}`:                {"busybox:1", "busybox:latest", "localhost:5000/team/app:2"},
		`{"label":["tier"]}`:                         {"localhost:5000/team/app:2"},
		`{"label":["tier=db"]}`:                      {},
		`{"label!":["tier=web"]}`:                    {"<none>", "busybox:1", "busybox:latest"},
		`{"until":["1500"]}`:                         {"busybox:1", "busybox:latest"},
		`{"until":["1970-01-01T00:40:00Z"]}`:         {"busybox:1", "busybox:latest", "localhost:5000/team/app:2"},
		`{"until":["1h"]}`:                           {"<none>", "busybox:1", "busybox:latest", "localhost:5000/team/app:2"},
		`{"before":["localhost:5000/team/app:2"]}`:   {"busybox:1", "busybox:latest"},
		`{"since":["busybox"]}`:                      {"<none>", "localhost:5000/team/app:2"},
		`{"since":["busybox"],"dangling":["false"]}`: {"localhost:5000/team/app:2"},
	} {
		if got := tagsOf(d.list(t, "?filters="+url.QueryEscape(filter))); !slices.Equal(got, want) {
			t.Errorf("filters %s: %v, want %v", filter, got, want)
		}
	}
	for _, s := range d.list(t, "?shared-size=1") {
		want := int64(len("content of base\n"))
		if len(s.RepoTags) == 0 {
			want = 0
		}
		if s.SharedSize != want {
			t.Errorf("%v: SharedSize %d, want %d", s.RepoTags, s.SharedSize, want)
		}
	}
	apiError(t, d.call(t, "GET", "/v1.50/images/json?filters="+url.QueryEscape(`{"until":["soon"]}`), nil),
		http.StatusBadRequest, "invalid filter 'until=soon': not a duration, a Unix time or an RFC 3339 time")
	apiError(t, d.call(t, "GET", "/v1.50/images/json?filters="+url.QueryEscape(`{"dangling":["maybe"]}`), nil),
		http.StatusBadRequest, "invalid filter 'dangling=maybe'")
	apiError(t, d.call(t, "GET", "/v1.50/images/json?filters="+url.QueryEscape(`{"before":["nosuch"]}`), nil),
		http.StatusNotFound, "No such image: nosuch:latest")
}

func TestInspectHistoryTag(t *testing.T) {
	d := newAPIDaemon(t)
	img := testImage{tags: []string{"localhost:5000/team/app:2"}, layers: [][]byte{layerOf(t, "a"), layerOf(t, "b")}}
	d.load(t, img)
	id := "sha256:" + testDigest(img.config(t))

	var in struct {
		ID          string `json:"Id"`
		RepoTags    []string
		RepoDigests []string
		Created     string
		GraphDriver struct{ Name string }
		RootFS      struct {
			Type   string
			Layers []string
		}
	}
	for _, name := range []string{"localhost:5000/team/app:2", id, id[7:19]} {
		decode(t, d.call(t, "GET", "/v1.50/images/"+name+"/json", nil), http.StatusOK, &in)
		if in.ID != id || !slices.Equal(in.RepoTags, []string{"localhost:5000/team/app:2"}) || in.RepoDigests == nil ||
			in.GraphDriver.Name != "vfs" || in.RootFS.Type != "layers" || len(in.RootFS.Layers) != 2 || in.Created != "2024-01-02T03:04:05Z" {
			t.Fatalf("inspect %s: %+v", name, in)
		}
	}

	var hist []struct {
		ID        string `json:"Id"`
		CreatedBy string
		Tags      []string
		Size      int64
	}
	decode(t, d.call(t, "GET", "/v1.50/images/localhost:5000/team/app:2/history", nil), http.StatusOK, &hist)
	if len(hist) != 2 || hist[0].ID != id || hist[1].ID != "<missing>" || hist[0].CreatedBy != "step 1" ||
		!slices.Equal(hist[0].Tags, []string{"localhost:5000/team/app:2"}) || hist[0].Size == 0 {
		t.Fatalf("history: %+v", hist)
	}

	// Entries are named by the image, then its local parents, one each.
	parent := testImage{tags: []string{"base:1"}, layers: [][]byte{layerOf(t, "a")}}
	d.load(t, parent)
	parentID := "sha256:" + testDigest(parent.config(t))
	if err := d.s.Images().SetParent(digest.Digest(id), digest.Digest(parentID)); err != nil {
		t.Fatal(err)
	}
	decode(t, d.call(t, "GET", "/v1.50/images/"+id+"/history", nil), http.StatusOK, &hist)
	if len(hist) != 2 || hist[0].ID != id || hist[1].ID != parentID || !slices.Equal(hist[1].Tags, []string{"base:1"}) {
		t.Fatalf("history with a parent: %+v", hist)
	}

	// The CLI sends the target normalised, the source as typed.
	w := d.call(t, "POST", "/v1.50/images/localhost:5000/team/app:2/tag?repo=docker.io%2Flibrary%2Fbusybox&tag=t", nil)
	if w.Code != http.StatusCreated || w.Body.Len() != 0 {
		t.Fatalf("tag: %d %q", w.Code, w.Body)
	}
	decode(t, d.call(t, "GET", "/v1.50/images/busybox:t/json", nil), http.StatusOK, &in)
	if in.ID != id || !slices.Contains(in.RepoTags, "busybox:t") {
		t.Fatalf("inspect of the new tag: %+v", in)
	}
	w = d.call(t, "POST", "/v1.50/images/busybox:t/tag?repo=other", nil) // no tag: latest
	decode(t, w, http.StatusCreated, nil)
	decode(t, d.call(t, "GET", "/v1.50/images/other/json", nil), http.StatusOK, &in)

	for query, msg := range map[string]string{
		"repo=busybox&tag=sha256:" + strings.Repeat("a", 64): "invalid tag format",
		"repo=busybox@sha256:" + strings.Repeat("a", 64):     "refusing to create a tag with a digest reference",
		"repo=sha256&tag=" + strings.Repeat("a", 64):         "refusing to create an ambiguous tag using digest algorithm as name",
		"repo=" + strings.Repeat("a", 64):                    "invalid repository name (" + strings.Repeat("a", 64) + "), cannot specify 64-byte hexadecimal strings",
		"repo=UPPER":                                         "invalid reference format: repository name (library/UPPER) must be lowercase",
		"repo=":                                              "repository name must have at least one component",
	} {
		w := d.call(t, "POST", "/v1.50/images/busybox:t/tag?"+query, nil)
		apiError(t, w, http.StatusBadRequest, msg)
	}
	apiError(t, d.call(t, "POST", "/v1.50/images/nosuch/tag?repo=x", nil), http.StatusNotFound, "No such image: nosuch:latest")
}

func TestRemoveImage(t *testing.T) {
	d := newAPIDaemon(t)
	img := testImage{tags: []string{"app:1", "app:2"}, layers: [][]byte{layerOf(t, "a")}}
	d.load(t, img)
	id := "sha256:" + testDigest(img.config(t))

	var out []removed
	decode(t, d.call(t, "DELETE", "/v1.50/images/app:1", nil), http.StatusOK, &out)
	if len(out) != 1 || out[0].Untagged != "app:1" {
		t.Fatalf("rmi app:1: %+v", out)
	}
	// By digest: the name arrives with "@" in the path.
	byDigest := "localhost:5000/app@sha256:" + strings.Repeat("ab", 32)
	if err := d.s.Images().Tag(digest.Digest(id), byDigest); err != nil {
		t.Fatal(err)
	}
	decode(t, d.call(t, "DELETE", "/v1.50/images/"+byDigest, nil), http.StatusOK, &out)
	if len(out) != 1 || out[0].Untagged != byDigest {
		t.Fatalf("rmi by digest: %+v", out)
	}
	c, err := d.s.CreateContainer("app:2", container.CreateOptions{Name: "user"})
	if err != nil {
		t.Fatal(err)
	}
	apiError(t, d.call(t, "DELETE", "/v1.50/images/"+id[7:19], nil), http.StatusConflict,
		"conflict: unable to delete "+id[7:19]+" (must be forced) - image is being used by stopped container "+c.ID[:12])
	if err := d.s.RemoveContainer(c, false); err != nil {
		t.Fatal(err)
	}
	decode(t, d.call(t, "DELETE", "/v1.50/images/"+id+"?force=1&noprune=0", nil), http.StatusOK, &out)
	if len(out) < 2 || out[0].Untagged != "app:2" || out[1].Deleted != id {
		t.Fatalf("rmi by ID: %+v", out)
	}
	apiError(t, d.call(t, "DELETE", "/v1.50/images/app:2", nil), http.StatusNotFound, "No such image: app:2")
	if got := d.list(t, "?all=1"); len(got) != 0 {
		t.Fatalf("images left: %+v", got)
	}
}

func TestSave(t *testing.T) {
	d := newAPIDaemon(t)
	d.load(t,
		testImage{tags: []string{"a:1"}, layers: [][]byte{layerOf(t, "a")}},
		testImage{tags: []string{"localhost:5000/b:2"}, layers: [][]byte{layerOf(t, "b")}})
	for _, path := range []string{"/v1.50/images/get?names=a%3A1&names=localhost%3A5000%2Fb%3A2", "/v1.50/images/localhost:5000/b:2/get"} {
		w := d.call(t, "GET", path, nil)
		if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/x-tar" {
			t.Fatalf("%s: %d %q %.200s", path, w.Code, w.Header().Get("Content-Type"), w.Body)
		}
		names := map[string]bool{}
		tr := tar.NewReader(w.Body)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			names[h.Name] = true
		}
		for _, n := range []string{"manifest.json", "index.json", "oci-layout", "repositories"} {
			if !names[n] {
				t.Errorf("%s: no %s in %v", path, n, names)
			}
		}
	}
	// The archive loads back.
	w := d.call(t, "GET", "/v1.50/images/get?names=a:1", nil)
	saved := w.Body.Bytes()
	decode(t, d.call(t, "DELETE", "/v1.50/images/a:1", nil), http.StatusOK, nil)
	w = d.call(t, "POST", "/v1.50/images/load?quiet=1", bytes.NewReader(saved))
	if lines := streamLines(t, w.Body); len(lines) != 1 || lines[0].Stream != "Loaded image: a:1\n" {
		t.Fatalf("load of the saved archive: %+v", lines)
	}
	apiError(t, d.call(t, "GET", "/v1.50/images/get?names=a:1&names=nosuch", nil), http.StatusNotFound, "No such image: nosuch:latest")
}

func TestSystemDF(t *testing.T) {
	d := newAPIDaemon(t)
	base := layerOf(t, "base")
	d.load(t,
		testImage{tags: []string{"a:1"}, layers: [][]byte{base}},
		testImage{tags: []string{"b:1"}, layers: [][]byte{base, layerOf(t, "b")}})
	if _, err := d.s.CreateContainer("b:1", container.CreateOptions{Name: "cc"}); err != nil {
		t.Fatal(err)
	}
	var du struct {
		LayersSize int64
		Images     []summary
		Containers []struct {
			Names      []string
			SizeRootFs *int64
		}
		Volumes, BuildCache []any
	}
	decode(t, d.call(t, "GET", "/v1.50/system/df", nil), http.StatusOK, &du)
	if len(du.Images) != 2 || len(du.Containers) != 1 || du.Volumes == nil || du.BuildCache == nil ||
		du.Containers[0].Names[0] != "/cc" || du.Containers[0].SizeRootFs == nil {
		t.Fatalf("df: %+v", du)
	}
	var sum int64
	for _, img := range du.Images {
		shared := int64(len("content of base\n"))
		if img.SharedSize != shared {
			t.Errorf("%v: SharedSize %d, want %d", img.RepoTags, img.SharedSize, shared)
		}
		if want := map[string]int64{"a:1": 0, "b:1": 1}[img.RepoTags[0]]; img.Containers != want {
			t.Errorf("%v: Containers %d, want %d", img.RepoTags, img.Containers, want)
		}
		sum += img.Size - img.SharedSize
	}
	if du.LayersSize != sum+int64(len("content of base\n")) {
		t.Errorf("LayersSize %d, want %d", du.LayersSize, sum+int64(len("content of base\n")))
	}
}

func TestImport(t *testing.T) {
	d := newAPIDaemon(t)
	w := d.call(t, "POST", "/v1.50/images/create?fromSrc=-&repo=docker.io%2Flibrary%2Fimported&tag=1&message=hi&changes=CMD+%5B%22%2Fbin%2Fsh%22%5D",
		bytes.NewReader(layerOf(t, "rootfs")))
	lines := streamLines(t, w.Body)
	if w.Code != http.StatusOK || len(lines) != 1 || !strings.HasPrefix(lines[0].Status, "sha256:") {
		t.Fatalf("import: %d %+v", w.Code, lines)
	}
	var in struct {
		ID       string `json:"Id"`
		RepoTags []string
		Comment  string
		Config   struct{ Cmd []string }
	}
	decode(t, d.call(t, "GET", "/v1.50/images/imported:1/json", nil), http.StatusOK, &in)
	if in.ID != lines[0].Status || in.Comment != "hi" || !slices.Equal(in.Config.Cmd, []string{"/bin/sh"}) {
		t.Fatalf("imported image: %+v", in)
	}
	apiError(t, d.call(t, "POST", "/v1.50/images/create?fromSrc=-&changes=ONBUILD+x", bytes.NewReader(layerOf(t, "r"))),
		http.StatusNotImplemented, `change "ONBUILD x": only CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME and WORKDIR can be changed`)
	apiError(t, d.call(t, "POST", "/v1.50/images/create?fromSrc=http://example.com/x.tar", nil),
		http.StatusNotImplemented, "importing from a URL is not supported by strata yet: download it and import the file")
}
