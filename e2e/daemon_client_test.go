package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// newMobyClient is a moby Go client on sock that negotiates its API version,
// or speaks version when one is given.
func newMobyClient(t *testing.T, sock, version string) *client.Client {
	t.Helper()
	opts := []client.Opt{client.WithHost("unix://" + sock)}
	if version == "" {
		opts = append(opts, client.WithAPIVersionNegotiation())
	} else {
		opts = append(opts, client.WithAPIVersion(version))
	}
	c, err := client.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// loadResult is what a load response said: its "stream" lines, whether it
// reported layer progress, and the last error among its messages.
type loadResult struct {
	streams  []string
	progress bool
	err      string
}

// readLoad reads a load response: newline-separated JSON messages.
func readLoad(t *testing.T, r io.Reader) loadResult {
	t.Helper()
	var res loadResult
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m struct {
			Stream         string
			Status         string
			ProgressDetail struct{ Current, Total int64 }
			ErrorDetail    *struct{ Message string }
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("load stream line %q: %v", sc.Text(), err)
		}
		if m.Stream != "" {
			res.streams = append(res.streams, strings.TrimSpace(m.Stream))
		}
		if m.Status == "Loading layer" && m.ProgressDetail.Total > 0 {
			res.progress = true
		}
		if m.ErrorDetail != nil {
			res.err = m.ErrorDetail.Message
		}
	}
	must(t, sc.Err())
	return res
}

// TestDaemonMobyClient runs the core flows through the moby Go client, with
// the version it negotiates (1.50) and pinned to 1.41 and 1.40, its minimum.
func TestDaemonMobyClient(t *testing.T) {
	dir := images(t)
	sock, root := startDaemon(t)
	ctx := context.Background()
	c := newMobyClient(t, sock, "")

	ping, err := c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	if err != nil || ping.APIVersion != "1.50" || ping.OSType != "linux" || c.ClientVersion() != "1.50" {
		t.Fatalf("ping: %+v, %v; client negotiated %s, want 1.50", ping, err, c.ClientVersion())
	}

	f, err := os.Open(filepath.Join(dir, "base.tar"))
	must(t, err)
	res, err := c.ImageLoad(ctx, f)
	must(t, err)
	loaded := readLoad(t, res)
	res.Close()
	f.Close()
	if loaded.err != "" || !slices.Contains(loaded.streams, "Loaded image: base:1") || !loaded.progress {
		t.Fatalf("image load: %+v, want Loaded image: base:1 after Loading layer progress", loaded)
	}
	// a corrupt archive fails, before the stream or in it
	f, err = os.Open(corruptArchive(t, "moby/broken:1"))
	must(t, err)
	res, err = c.ImageLoad(ctx, f)
	if err == nil {
		loaded = readLoad(t, res)
		res.Close()
		if loaded.err == "" {
			t.Errorf("load of a corrupt archive: %+v, want an error", loaded)
		}
	}
	f.Close()

	list, err := c.ImageList(ctx, client.ImageListOptions{Filters: make(client.Filters).Add("reference", "base")})
	must(t, err)
	if len(list.Items) != 1 || !slices.Equal(list.Items[0].RepoTags, []string{"base:1"}) || list.Items[0].RepoDigests == nil {
		t.Fatalf("image list reference=base: %+v", list.Items)
	}
	imageID := list.Items[0].ID
	none, err := c.ImageList(ctx, client.ImageListOptions{Filters: make(client.Filters).Add("reference", "nosuch")})
	if err != nil || len(none.Items) != 0 {
		t.Errorf("image list reference=nosuch: %+v, %v", none.Items, err)
	}

	img, err := c.ImageInspect(ctx, "base:1")
	must(t, err)
	if img.ID != imageID || img.RootFS.Type != "layers" || len(img.RootFS.Layers) != 1 || img.Os != "linux" {
		t.Errorf("image inspect base:1: %+v", img.InspectResponse)
	}
	hist, err := c.ImageHistory(ctx, "base:1")
	if err != nil || len(hist.Items) == 0 || hist.Items[0].ID != imageID {
		t.Errorf("image history: %+v, %v", hist.Items, err)
	}
	if _, err := c.ImageInspect(ctx, "nosuch"); !cerrdefs.IsNotFound(err) || !strings.Contains(err.Error(), "No such image: nosuch:latest") {
		t.Errorf("image inspect nosuch: %v, want not found: No such image: nosuch:latest", err)
	}
	if _, err := c.ImageTag(ctx, client.ImageTagOptions{Source: imageID, Target: "moby/tagged:1"}); err != nil {
		t.Errorf("image tag: %v", err)
	}

	created, err := c.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: "moby-ctr", Config: &container.Config{Image: imageID[7:19], Cmd: []string{"/bin/sh"}},
	})
	must(t, err)
	if !fullID.MatchString(created.ID) || created.Warnings == nil {
		t.Errorf("container create: %+v", created)
	}
	if _, err := c.ContainerCreate(ctx, client.ContainerCreateOptions{Name: "moby-ctr", Image: "base:1"}); !cerrdefs.IsConflict(err) {
		t.Errorf("container create of a taken name: %v, want a conflict", err)
	}
	if _, err := c.ContainerCreate(ctx, client.ContainerCreateOptions{Image: "nosuch:1"}); !cerrdefs.IsNotFound(err) {
		t.Errorf("container create of a missing image: %v, want not found", err)
	}
	ins, err := c.ContainerInspect(ctx, "moby-ctr", client.ContainerInspectOptions{Size: true})
	must(t, err)
	if ins.Container.ID != created.ID || ins.Container.Name != "/moby-ctr" || ins.Container.Image != imageID ||
		ins.Container.State == nil || ins.Container.State.Status != "created" || ins.Container.SizeRootFs == nil || *ins.Container.SizeRootFs <= 0 {
		t.Errorf("container inspect: %s", ins.Raw)
	}

	// copy in a file, and read it back with its stat
	in := tarOf(t, &tar.Header{Name: "moby.txt", Mode: 0o600, Size: 4, Typeflag: tar.TypeReg})
	if _, err := c.CopyToContainer(ctx, "moby-ctr", client.CopyToContainerOptions{DestinationPath: "/root", Content: bytes.NewReader(in)}); err != nil {
		t.Fatalf("copy to container: %v", err)
	}
	if _, err := c.CopyToContainer(ctx, "moby-ctr", client.CopyToContainerOptions{DestinationPath: "/nodir", Content: bytes.NewReader(in)}); !cerrdefs.IsNotFound(err) {
		t.Errorf("copy to a missing directory: %v, want not found", err)
	}
	if _, err := c.CopyToContainer(ctx, "moby-ctr", client.CopyToContainerOptions{DestinationPath: "/etc/hostname", Content: bytes.NewReader(in)}); !cerrdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("copy to a file: %v, want invalid: not a directory", err)
	}
	out, err := c.CopyFromContainer(ctx, "moby-ctr", client.CopyFromContainerOptions{SourcePath: "/root/moby.txt"})
	must(t, err)
	tr := tar.NewReader(out.Content)
	h, err := tr.Next()
	body, _ := io.ReadAll(tr)
	out.Content.Close()
	if err != nil || h.Name != "moby.txt" || string(body) != "evil" {
		t.Errorf("copy from container: %+v %q %v", h, body, err)
	}
	if st := out.Stat; st.Name != "moby.txt" || st.Size != 4 || st.Mode != 0o600 || st.Mtime.IsZero() {
		t.Errorf("copy from container: stat %+v", st)
	}
	dirStat, err := c.ContainerStatPath(ctx, "moby-ctr", client.ContainerStatPathOptions{Path: "/etc"})
	if err != nil || !dirStat.Stat.Mode.IsDir() || dirStat.Stat.Name != "etc" {
		t.Errorf("stat /etc: %+v, %v", dirStat.Stat, err)
	}
	link, err := c.ContainerStatPath(ctx, "moby-ctr", client.ContainerStatPathOptions{Path: "/etc/mtab"})
	if err != nil || link.Stat.Mode&os.ModeSymlink == 0 || link.Stat.LinkTarget == "" {
		t.Errorf("stat /etc/mtab (a symlink): %+v, %v", link.Stat, err)
	}
	if _, err := c.ContainerStatPath(ctx, "moby-ctr", client.ContainerStatPathOptions{Path: "/nonexistent"}); !cerrdefs.IsNotFound(err) {
		t.Errorf("stat of a missing path: %v, want not found", err)
	}

	changes, err := c.ContainerDiff(ctx, "moby-ctr", client.ContainerDiffOptions{})
	must(t, err)
	want := []container.FilesystemChange{{Path: "/root", Kind: container.ChangeModify}, {Path: "/root/moby.txt", Kind: container.ChangeAdd}}
	slices.SortFunc(changes.Changes, func(a, b container.FilesystemChange) int { return strings.Compare(a.Path, b.Path) })
	if !slices.Equal(changes.Changes, want) {
		t.Errorf("container diff: %+v, want %+v", changes.Changes, want)
	}

	exp, err := c.ContainerExport(ctx, "moby-ctr", client.ContainerExportOptions{})
	must(t, err)
	entries, _ := readExport(t, exp)
	exp.Close()
	if _, ok := entries["/root/moby.txt"]; !ok || len(entries) < 1000 {
		t.Errorf("export: %d entries, /root/moby.txt present %v", len(entries), ok)
	}

	commit, err := c.ContainerCommit(ctx, "moby-ctr", client.ContainerCommitOptions{Reference: "moby/committed:1", Comment: "via moby", Changes: []string{"ENV A=b"}})
	must(t, err)
	cimg, err := c.ImageInspect(ctx, "moby/committed:1")
	if err != nil || cimg.ID != commit.ID || cimg.Comment != "via moby" || len(cimg.RootFS.Layers) != 2 || !slices.Contains(cimg.Config.Env, "A=b") {
		t.Errorf("committed image: %+v, %v", cimg.InspectResponse, err)
	}

	ctrs, err := c.ContainerList(ctx, client.ContainerListOptions{All: true, Size: true})
	must(t, err)
	if len(ctrs.Items) != 1 || ctrs.Items[0].ID != created.ID || !slices.Equal(ctrs.Items[0].Names, []string{"/moby-ctr"}) || ctrs.Items[0].SizeRootFs <= 0 {
		t.Errorf("container list: %+v", ctrs.Items)
	}
	du, err := c.DiskUsage(ctx, client.DiskUsageOptions{Containers: true, Images: true})
	if err != nil || du.Images.TotalCount != 2 || du.Containers.TotalCount != 1 {
		t.Errorf("disk usage: %+v, %v", du, err)
	}
	info, err := c.Info(ctx, client.InfoOptions{})
	if err != nil || info.Info.Containers != 1 || info.Info.Images != 2 || info.Info.DockerRootDir != root {
		t.Errorf("info: %+v, %v", info.Info, err)
	}

	// in use: removing the image is a conflict, the container goes
	if _, err := c.ImageRemove(ctx, imageID, client.ImageRemoveOptions{}); !cerrdefs.IsConflict(err) {
		t.Errorf("image remove of an image in use: %v, want a conflict", err)
	}
	if _, err := c.ContainerRemove(ctx, "moby-ctr", client.ContainerRemoveOptions{}); err != nil {
		t.Errorf("container remove: %v", err)
	}
	if _, err := c.ContainerRemove(ctx, "moby-ctr", client.ContainerRemoveOptions{}); !cerrdefs.IsNotFound(err) || !strings.Contains(err.Error(), "No such container: moby-ctr") {
		t.Errorf("container remove of a removed container: %v", err)
	}

	// save two names, remove them, load the archive back
	saved, err := c.ImageSave(ctx, []string{"moby/tagged:1", "moby/committed:1"})
	must(t, err)
	archive, err := io.ReadAll(saved)
	saved.Close()
	must(t, err)
	for _, ref := range []string{"moby/committed:1", "moby/tagged:1", "base:1"} {
		rm, err := c.ImageRemove(ctx, ref, client.ImageRemoveOptions{})
		if err != nil || len(rm.Items) == 0 || rm.Items[0].Untagged == "" {
			t.Errorf("image remove %s: %+v, %v", ref, rm.Items, err)
		}
	}
	if left, err := c.ImageList(ctx, client.ImageListOptions{All: true}); err != nil || len(left.Items) != 0 {
		t.Fatalf("images left: %+v, %v", left.Items, err)
	}
	res, err = c.ImageLoad(ctx, bytes.NewReader(archive), client.ImageLoadWithQuiet(true))
	must(t, err)
	loaded = readLoad(t, res)
	res.Close()
	slices.Sort(loaded.streams)
	if loaded.err != "" || loaded.progress || !slices.Equal(loaded.streams, []string{"Loaded image: moby/committed:1", "Loaded image: moby/tagged:1"}) {
		t.Errorf("quiet load of the saved archive: %+v", loaded)
	}
	if again, err := c.ImageInspect(ctx, "moby/committed:1"); err != nil || again.ID != commit.ID {
		t.Errorf("the reloaded commit: %v, %v", again.ID, err)
	}

	// older API versions the client still speaks
	for _, v := range []string{"1.41", "1.40"} {
		old := newMobyClient(t, sock, v)
		if l, err := old.ImageList(ctx, client.ImageListOptions{}); err != nil || len(l.Items) != 2 {
			t.Errorf("image list at API %s: %+v, %v", v, l.Items, err)
		}
		if _, err := old.ImageInspect(ctx, "nosuch"); !cerrdefs.IsNotFound(err) {
			t.Errorf("image inspect nosuch at API %s: %v", v, err)
		}
	}
}

// TestDaemonRawAPI checks the protocol details clients rely on without
// telling: ping headers, version prefixes, error shapes, greedy image names.
func TestDaemonRawAPI(t *testing.T) {
	sock, _ := startDaemon(t)
	hc := unixHTTP(sock)
	do := func(method, path string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://strata"+path, nil)
		must(t, err)
		resp, err := hc.Do(req)
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for _, method := range []string{"HEAD", "GET"} {
		resp, body := do(method, "/_ping")
		h := resp.Header
		if resp.StatusCode != 200 || h.Get("Api-Version") != "1.50" || h.Get("Ostype") != "linux" ||
			h.Get("Docker-Experimental") != "false" || h.Get("Cache-Control") != "no-cache, no-store, must-revalidate" ||
			h.Get("Pragma") != "no-cache" {
			t.Errorf("%s /_ping: %s %v", method, resp.Status, h)
		}
		if want := map[string]string{"HEAD": "", "GET": "OK"}[method]; body != want {
			t.Errorf("%s /_ping body %q, want %q", method, body, want)
		}
	}
	for _, c := range []struct {
		path   string
		status int
		msg    string
	}{
		{"/v1.23/version", 400, "client version 1.23 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version"},
		{"/v1.51/version", 400, "client version 1.51 is too new. Maximum supported API version is 1.50"},
		{"/v1.24/images/nosuch/json", 404, "No such image: nosuch:latest"},
		{"/v1.50/images/localhost:5000/a/b:c/json", 404, "No such image: localhost:5000/a/b:c"},
		{"/images/a/b@sha256:" + strings.Repeat("0", 64) + "/json", 404, "No such image: a/b@sha256:" + strings.Repeat("0", 64)},
		{"/v1.50/containers/nosuch/json", 404, "No such container: nosuch"},
		{"/v1.50/no/such/route", 404, ""},
	} {
		resp, body := do("GET", c.path)
		var e struct{ Message string }
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &e) != nil ||
			c.msg != "" && e.Message != c.msg || e.Message == "" {
			t.Errorf("GET %s: %s %q %s\nwant %d {\"message\":%q}", c.path, resp.Status, resp.Header.Get("Content-Type"), body, c.status, c.msg)
		}
	}
	for _, v := range []string{"/v1.24", "/v1.41", "/v1.50", ""} {
		if resp, body := do("GET", v+"/version"); resp.StatusCode != 200 || !strings.Contains(body, `"ApiVersion":"1.50"`) {
			t.Errorf("GET %s/version: %s %s", v, resp.Status, body)
		}
	}
	resp, body := do("POST", "/v1.50/images/create?fromImage=busybox&tag=latest")
	if resp.StatusCode != 501 || !strings.Contains(body, "not supported") {
		t.Errorf("POST /images/create: %s %s, want 501 not supported", resp.Status, body)
	}

	// a load without -q, then the reference filter in both of its encodings
	archive := filepath.Join(t.TempDir(), "raw.tar")
	writeArchive(t, archive, map[string][][]byte{"raw/tiny:1": {layerTar(t, map[string]string{"f": "raw\n"})}})
	f, err := os.Open(archive)
	must(t, err)
	defer f.Close()
	load, err := hc.Post("http://strata/v1.24/images/load", "application/x-tar", f)
	must(t, err)
	loaded := readLoad(t, load.Body)
	load.Body.Close()
	if load.StatusCode != 200 || load.Header.Get("Content-Type") != "application/json" || !slices.Equal(loaded.streams, []string{"Loaded image: raw/tiny:1"}) {
		t.Errorf("POST /images/load: %s %q %+v", load.Status, load.Header.Get("Content-Type"), loaded)
	}
	for _, filters := range []string{`{"reference":{"raw/tiny":true}}`, `{"reference":["raw/tiny:1"]}`, `{"reference":["raw/*"]}`} {
		resp, body := do("GET", "/v1.24/images/json?filters="+url.QueryEscape(filters))
		var list []struct {
			RepoTags    []string
			RepoDigests []string
		}
		if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list) != 1 ||
			!slices.Equal(list[0].RepoTags, []string{"raw/tiny:1"}) || list[0].RepoDigests == nil {
			t.Errorf("GET /images/json?filters=%s: %s %s", filters, resp.Status, body)
		}
	}
}
