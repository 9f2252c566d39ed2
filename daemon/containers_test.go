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
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/store"
)

// ctrDaemon is a daemon on a fresh overlay store holding app:1, a small
// image of /etc/passwd, /etc/app.conf and /bin/app.
type ctrDaemon struct {
	s *store.Store
	h http.Handler
}

func newCtrDaemon(t *testing.T) ctrDaemon {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: overlay mounts")
	}
	s, err := store.Open(store.Options{Root: t.TempDir(), Driver: "overlay"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctrAddImage(t, s, "app:1",
		ctrTar(t, map[string]string{"etc/": "", "etc/passwd": "root:x:0:0::/root:/bin/sh\n", "bin/": "", "bin/app": "app"}),
		ctrTar(t, map[string]string{"etc/app.conf": "conf"}))
	return ctrDaemon{s: s, h: New(s, slog.New(slog.DiscardHandler)).Handler()}
}

// ctrTar returns a layer tar of files by name, a name ending in "/" a
// directory; entries come sorted, parents first.
func ctrTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		hdr := &tar.Header{Name: name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(files[name])),
			ModTime: time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)}
		if strings.HasSuffix(name, "/") {
			hdr.Mode, hdr.Typeflag, hdr.Size = 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, files[name])
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ctrAddImage registers layers (base first) as an image tagged ref.
func ctrAddImage(t *testing.T, s *store.Store, ref string, layers ...[]byte) {
	t.Helper()
	lease, err := s.Layers().NewLease()
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release()
	var srcs []layer.Source
	var diffIDs []string
	for _, b := range layers {
		srcs = append(srcs, layer.Source{DiffID: digest.FromBytes(b), Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}})
		diffIDs = append(diffIDs, fmt.Sprintf("%q", digest.FromBytes(b)))
	}
	if _, err := s.Layers().RegisterChain(t.Context(), lease, "", srcs); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/app","-v"],"Labels":{"tier":"web"}},"rootfs":{"type":"layers","diff_ids":[%s]}}`,
		strings.Join(diffIDs, ","))
	if _, err := s.CreateImage([]byte(config), ref); err != nil {
		t.Fatal(err)
	}
}

// do sends a request through the whole handler, version prefix included.
func (d ctrDaemon) do(t *testing.T, method, path string, body io.Reader) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	d.h.ServeHTTP(w, httptest.NewRequest(method, "/v1.50"+path, body))
	return w
}

// want checks the status of w and decodes its JSON body into v (nil: none).
func want(t *testing.T, w *httptest.ResponseRecorder, status int, v any) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %s", w.Code, status, w.Body)
	}
	if v != nil {
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
		if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
			t.Fatalf("%v: %s", err, w.Body)
		}
	}
}

// wantError checks an error response: its status and its message.
func wantError(t *testing.T, w *httptest.ResponseRecorder, status int, message string) {
	t.Helper()
	var e struct{ Message string }
	want(t, w, status, &e)
	if e.Message != message {
		t.Fatalf("message %q, want %q", e.Message, message)
	}
}

func (d ctrDaemon) create(t *testing.T, name string) string {
	t.Helper()
	var out struct {
		ID       string `json:"Id"`
		Warnings []string
	}
	want(t, d.do(t, "POST", "/containers/create?name="+name, strings.NewReader(`{"Image":"app:1","HostConfig":{}}`)), http.StatusCreated, &out)
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(out.ID) || out.Warnings == nil {
		t.Fatalf("create answered %+v", out)
	}
	return out.ID
}

func TestCreateContainer(t *testing.T) {
	d := newCtrDaemon(t)
	id := d.create(t, "web")
	if c, err := d.s.Containers().Get("web"); err != nil || c.ID != id {
		t.Fatalf("web is %+v, %v; want %s", c, err, id)
	}
	d.create(t, "") // a generated name
	wantError(t, d.do(t, "POST", "/containers/create?name=web", strings.NewReader(`{"Image":"app:1"}`)), http.StatusConflict,
		fmt.Sprintf(`Conflict. The container name "/web" is already in use by container "%s". You have to remove (or rename) that container to be able to reuse that name.`, id))
	w := d.do(t, "POST", "/containers/create?name=-bad", strings.NewReader(`{"Image":"app:1"}`))
	want(t, w, http.StatusBadRequest, nil)
	// The CLI pulls on this 404 and retries.
	wantError(t, d.do(t, "POST", "/containers/create", strings.NewReader(`{"Image":"nosuch"}`)), http.StatusNotFound,
		"No such image: nosuch:latest")
	want(t, d.do(t, "POST", "/containers/create", strings.NewReader(`{}`)), http.StatusBadRequest, nil)
}

func TestListContainers(t *testing.T) {
	d := newCtrDaemon(t)
	id := d.create(t, "web")
	var list []map[string]any
	want(t, d.do(t, "GET", "/containers/json", nil), http.StatusOK, &list)
	if len(list) != 0 {
		t.Fatalf("without all, created containers are not listed: %v", list)
	}
	want(t, d.do(t, "GET", "/containers/json?all=1", nil), http.StatusOK, &list)
	if len(list) != 1 {
		t.Fatalf("list: %v", list)
	}
	c := list[0]
	if c["Id"] != id || fmt.Sprint(c["Names"]) != "[/web]" || c["Image"] != "app:1" || c["State"] != "created" ||
		c["Status"] != "Created" || c["Command"] != "/bin/app -v" || fmt.Sprint(c["Labels"]) != "map[tier:web]" {
		t.Fatalf("entry: %v", c)
	}
	if _, ok := c["SizeRw"]; ok {
		t.Fatalf("SizeRw without size=1: %v", c)
	}
	want(t, d.do(t, "GET", "/containers/json?all=1&size=1", nil), http.StatusOK, &list)
	if list[0]["SizeRw"] != 0.0 || list[0]["SizeRootFs"].(float64) <= 0 {
		t.Fatalf("sizes: %v", list[0])
	}

	d.create(t, "db")
	for filters, n := range map[string]int{
		`{"name":{"web":true}}`:                       1,
		`{"name":["^/db$"]}`:                          1,
		`{"status":["exited"]}`:                       0,
		`{"status":["created"]}`:                      2,
		`{"label":["tier=web"],"ancestor":["app:1"]}`: 2,
		`{"label":["tier=db"]}`:                       0,
		`{"id":["` + id[:8] + `"]}`:                   1,
		`{"since":["web"]}`:                           1,
		`{"before":["web"]}`:                          0,
		`{"exited":["0"]}`:                            0,
	} {
		want(t, d.do(t, "GET", "/containers/json?all=1&filters="+urlEscape(filters), nil), http.StatusOK, &list)
		if len(list) != n {
			t.Errorf("filters %s: %d containers, want %d", filters, len(list), n)
		}
	}
	want(t, d.do(t, "GET", "/containers/json?limit=1", nil), http.StatusOK, &list)
	if len(list) != 1 || fmt.Sprint(list[0]["Names"]) != "[/db]" {
		t.Fatalf("limit=1 lists the newest: %v", list)
	}
	want(t, d.do(t, "GET", "/containers/json?all=1&filters="+urlEscape(`{"nosuch":["x"]}`), nil), http.StatusBadRequest, nil)
}

func urlEscape(s string) string {
	return strings.NewReplacer("{", "%7B", "}", "%7D", `"`, "%22", "[", "%5B", "]", "%5D", "^", "%5E", "$", "%24", "/", "%2F").Replace(s)
}

func TestInspectContainer(t *testing.T) {
	d := newCtrDaemon(t)
	id := d.create(t, "web")
	var in struct {
		ID         string `json:"Id"`
		Name       string
		State      struct{ Status string }
		Config     struct{ Image string }
		HostConfig struct{ NetworkMode string }
		SizeRw     *int64
	}
	want(t, d.do(t, "GET", "/containers/web/json", nil), http.StatusOK, &in)
	if in.ID != id || in.Name != "/web" || in.State.Status != "created" || in.Config.Image != "app:1" ||
		in.HostConfig.NetworkMode != "default" || in.SizeRw != nil {
		t.Fatalf("inspect: %+v", in)
	}
	want(t, d.do(t, "GET", "/containers/"+id[:12]+"/json?size=1", nil), http.StatusOK, &in)
	if in.SizeRw == nil {
		t.Fatal("size=1 gives no SizeRw")
	}
	wantError(t, d.do(t, "GET", "/containers/nosuch/json", nil), http.StatusNotFound, "No such container: nosuch")
}

func TestChangesAndExport(t *testing.T) {
	d := newCtrDaemon(t)
	d.create(t, "web")
	var changes []struct {
		Path string
		Kind int
	}
	want(t, d.do(t, "GET", "/containers/web/changes", nil), http.StatusOK, &changes)
	if changes == nil || len(changes) != 0 {
		t.Fatalf("changes of a new container: %v (want [])", changes)
	}
	want(t, d.do(t, "PUT", "/containers/web/archive?path=/etc", bytes.NewReader(ctrTar(t, map[string]string{"new": "x"}))), http.StatusOK, nil)
	mnt, err := d.s.Containers().Mount(mustGet(t, d.s, "web"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(mnt + "/bin/app"); err != nil {
		t.Fatal(err)
	}
	if err := d.s.Containers().Unmount(mustGet(t, d.s, "web")); err != nil {
		t.Fatal(err)
	}
	want(t, d.do(t, "GET", "/containers/web/changes", nil), http.StatusOK, &changes)
	if got := fmt.Sprint(changes); got != "[{/bin 0} {/bin/app 2} {/etc 0} {/etc/new 1}]" {
		t.Fatalf("changes: %s", got)
	}

	w := d.do(t, "GET", "/containers/web/export", nil)
	want(t, w, http.StatusOK, nil)
	names := tarNames(t, w.Body)
	for _, name := range []string{"etc/passwd", "etc/new", "etc/app.conf"} {
		if !slices.Contains(names, name) {
			t.Errorf("export misses %s: %v", name, names)
		}
	}
	if slices.Contains(names, "bin/app") {
		t.Errorf("export has the deleted bin/app")
	}
	wantError(t, d.do(t, "GET", "/containers/nosuch/export", nil), http.StatusNotFound, "No such container: nosuch")
	wantError(t, d.do(t, "GET", "/containers/nosuch/changes", nil), http.StatusNotFound, "No such container: nosuch")
}

func mustGet(t *testing.T, s *store.Store, ref string) container.Container {
	t.Helper()
	got, err := s.Containers().Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// tarNames lists the entries of a tar, without trailing slashes.
func tarNames(t *testing.T, r io.Reader) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/"))
	}
}

func TestRemoveContainer(t *testing.T) {
	d := newCtrDaemon(t)
	d.create(t, "web")
	if _, err := d.s.Containers().Mount(mustGet(t, d.s, "web")); err != nil {
		t.Fatal(err)
	}
	w := d.do(t, "DELETE", "/containers/web", nil)
	want(t, w, http.StatusConflict, nil)
	if !strings.Contains(w.Body.String(), "mounted") {
		t.Fatalf("conflict message: %s", w.Body)
	}
	want(t, d.do(t, "DELETE", "/containers/web?force=1&v=1", nil), http.StatusNoContent, nil)
	wantError(t, d.do(t, "DELETE", "/containers/web", nil), http.StatusNotFound, "No such container: web")
	if mounts := mountsUnder(t, d.s.Root()); len(mounts) > 0 {
		t.Fatalf("mounts left: %v", mounts)
	}
}

// TestParallelCreateAndRemove creates the first containers of an image at
// once, then removes them at once, as docker rm a b c does.
func TestParallelCreateAndRemove(t *testing.T) {
	d := newCtrDaemon(t)
	var names []string
	for i := range 12 {
		names = append(names, fmt.Sprint("c", i))
	}
	parallel := func(method, path, body string, status int) {
		t.Helper()
		answers := make([]*httptest.ResponseRecorder, len(names))
		var wg sync.WaitGroup
		for i, name := range names {
			wg.Go(func() {
				answers[i] = httptest.NewRecorder()
				d.h.ServeHTTP(answers[i], httptest.NewRequest(method, "/v1.50"+fmt.Sprintf(path, name), strings.NewReader(body)))
			})
		}
		wg.Wait()
		for i, w := range answers {
			if w.Code != status {
				t.Errorf("%s %s: %d %s", method, fmt.Sprintf(path, names[i]), w.Code, w.Body)
			}
		}
	}
	parallel("POST", "/containers/create?name=%s", `{"Image":"app:1"}`, http.StatusCreated)
	parallel("DELETE", "/containers/%s?force=1", "", http.StatusNoContent)
	if cs, err := d.s.Containers().List(); err != nil || len(cs) != 0 {
		t.Fatalf("left: %v, %v", cs, err)
	}
}

// mountsUnder lists the mount points under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// TestCreateConfig checks that the request's config goes over the image's
// as dockerd merges them, and that inspect, ps and commit show it.
func TestCreateConfig(t *testing.T) {
	d := newCtrDaemon(t)
	body := `{"Image":"app:1","Volumes":{},"User":"1000:1000","AttachStdout":true,"Env":["X=1"],"Cmd":["-c","true"],
		"WorkingDir":"/srv","Entrypoint":["/bin/sh"],"Labels":{"a":"b"},"StopSignal":"SIGINT",
		"HostConfig":{"NetworkMode":"default"},"NetworkingConfig":{}}`
	want(t, d.do(t, "POST", "/containers/create?name=oo", strings.NewReader(body)), http.StatusCreated, nil)
	var in struct {
		Path   string
		Args   []string
		Config map[string]any
	}
	want(t, d.do(t, "GET", "/containers/oo/json", nil), http.StatusOK, &in)
	cfg := in.Config
	if in.Path != "/bin/sh" || fmt.Sprint(in.Args) != "[-c true]" || cfg["User"] != "1000:1000" || cfg["AttachStdout"] != true ||
		fmt.Sprint(cfg["Env"]) != "[X=1]" || cfg["WorkingDir"] != "/srv" || cfg["StopSignal"] != "SIGINT" ||
		fmt.Sprint(cfg["Labels"]) != "map[a:b tier:web]" || cfg["HostConfig"] != nil || cfg["Volumes"] != nil {
		t.Fatalf("inspect: %+v", in)
	}
	var list []map[string]any
	want(t, d.do(t, "GET", "/containers/json?all=1&filters="+urlEscape(`{"label":["a=b"]}`), nil), http.StatusOK, &list)
	if len(list) != 1 || list[0]["Command"] != "/bin/sh -c true" {
		t.Fatalf("ps: %v", list)
	}

	// Without them, the image's: its command, its labels.
	want(t, d.do(t, "POST", "/containers/create?name=pp", strings.NewReader(`{"Image":"app:1","Env":null,"Cmd":null,"Entrypoint":null}`)), http.StatusCreated, nil)
	want(t, d.do(t, "GET", "/containers/pp/json", nil), http.StatusOK, &in)
	if in.Path != "/bin/app" || fmt.Sprint(in.Args) != "[-v]" || fmt.Sprint(in.Config["Labels"]) != "map[tier:web]" {
		t.Fatalf("inspect: %+v", in)
	}

	// A command may come as one string: one word.
	want(t, d.do(t, "POST", "/containers/create?name=qq", strings.NewReader(`{"Image":"app:1","Cmd":"/bin/true"}`)), http.StatusCreated, nil)
	want(t, d.do(t, "GET", "/containers/qq/json", nil), http.StatusOK, &in)
	if in.Path != "/bin/true" || len(in.Args) != 0 {
		t.Fatalf("inspect: %+v", in)
	}

	var out struct {
		ID string `json:"Id"`
	}
	want(t, d.do(t, "POST", "/commit?container=oo&repo=o&tag=1", nil), http.StatusCreated, &out)
	img, err := d.s.Images().Resolve("o:1")
	if err != nil {
		t.Fatal(err)
	}
	if cfg := string(img.Config); !strings.Contains(cfg, `"X=1"`) || !strings.Contains(cfg, `"StopSignal":"SIGINT"`) ||
		!strings.Contains(cfg, `"created_by":"-c true"`) {
		t.Fatalf("commit config: %s", cfg)
	}
}
