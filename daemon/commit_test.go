package daemon

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestCommit(t *testing.T) {
	d := newCtrDaemon(t)
	id := d.create(t, "web")
	want(t, d.do(t, "PUT", "/containers/web/archive?path=/", bytes.NewReader(ctrTar(t, map[string]string{"added": "x"}))), http.StatusOK, nil)

	var out struct {
		ID string `json:"Id"`
	}
	want(t, d.do(t, "POST", "/commit?container=web&repo=docker.io%2Flibrary%2Ffoo&tag=bar&author=me&comment=hi&changes=ENV+A%3D1&changes=&pause=0", nil),
		http.StatusCreated, &out)
	if !strings.HasPrefix(out.ID, "sha256:") {
		t.Fatalf("commit answered %+v", out)
	}
	img, err := d.s.Images().Resolve("foo:bar")
	if err != nil || img.ID.String() != out.ID {
		t.Fatalf("foo:bar is %v, %v; want %s", img.ID, err, out.ID)
	}
	if cfg := string(img.Config); !strings.Contains(cfg, `"A=1"`) || !strings.Contains(cfg, `"container":"`+id+`"`) ||
		!strings.Contains(cfg, `"author":"me"`) {
		t.Fatalf("config: %s", cfg)
	}
	if len(img.DiffIDs()) != 3 {
		t.Fatalf("layers: %v", img.DiffIDs())
	}

	// Without repo the image is untagged.
	want(t, d.do(t, "POST", "/commit?container="+id[:12], nil), http.StatusCreated, &out)
	if img, err := d.s.Images().Get(digest.Digest(out.ID)); err != nil || len(img.DiffIDs()) != 3 {
		t.Fatalf("untagged commit: %v, %v", img, err)
	}
	wantError(t, d.do(t, "POST", "/commit?container=nosuch&repo=foo", nil), http.StatusNotFound, "No such container: nosuch")
	want(t, d.do(t, "POST", "/commit?container=web&repo=foo&tag=bad:tag", nil), http.StatusBadRequest, nil)
}
