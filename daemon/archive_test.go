package daemon

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"
)

// pathStat decodes the X-Docker-Container-Path-Stat header of w as the
// CLI does: base64, then JSON with Go's os.FileMode bits.
func pathStat(t *testing.T, w *httptest.ResponseRecorder) (st struct {
	Name       string      `json:"name"`
	Size       int64       `json:"size"`
	Mode       fs.FileMode `json:"mode"`
	Mtime      time.Time   `json:"mtime"`
	LinkTarget string      `json:"linkTarget"`
}) {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(w.Header().Get(pathStatHeader))
	if err != nil {
		t.Fatalf("stat header %q: %v", w.Header().Get(pathStatHeader), err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("stat header %s: %v", b, err)
	}
	return st
}

func TestArchive(t *testing.T) {
	d := newCtrDaemon(t)
	d.create(t, "web")

	w := d.do(t, "HEAD", "/containers/web/archive?path=/etc/passwd", nil)
	want(t, w, http.StatusOK, nil)
	if st := pathStat(t, w); st.Name != "passwd" || st.Size != 26 || st.Mode != 0o644 || st.Mtime.Year() != 2020 {
		t.Fatalf("stat of /etc/passwd: %+v", st)
	}

	tarball := ctrTar(t, map[string]string{"d/": "", "d/f": "hello"})
	want(t, d.do(t, "PUT", "/containers/web/archive?path=/etc&noOverwriteDirNonDir=true&copyUIDGID=true", bytes.NewReader(tarball)), http.StatusOK, nil)
	w = d.do(t, "GET", "/containers/web/archive?path=/etc/d", nil)
	want(t, w, http.StatusOK, nil)
	if st := pathStat(t, w); st.Name != "d" || st.Mode != fs.ModeDir|0o755 {
		t.Fatalf("stat of /etc/d: %+v", st)
	}
	if got := tarNames(t, w.Body); !slices.Equal(got, []string{"d", "d/f"}) {
		t.Fatalf("tar of /etc/d: %v", got)
	}
	// A directory's content comes as Docker sends it: "./" first.
	w = d.do(t, "GET", "/containers/web/archive?path=/etc/.", nil)
	want(t, w, http.StatusOK, nil)
	if st := pathStat(t, w); st.Name != "." || !st.Mode.IsDir() {
		t.Fatalf("stat of /etc/.: %+v", st)
	}
	hdr, err := tar.NewReader(bytes.NewReader(w.Body.Bytes())).Next()
	if err != nil || hdr.Name != "./" || hdr.Mode&0o777 != 0o755 {
		t.Fatalf("first entry of /etc/.: %+v, %v", hdr, err)
	}
	if got := tarNames(t, w.Body); !slices.Contains(got, "d/f") || !slices.Contains(got, "passwd") {
		t.Fatalf("tar of /etc/.: %v", got)
	}

	// Owners are kept, with or without copyUIDGID, as dockerd keeps them.
	var owned bytes.Buffer
	tw := tar.NewWriter(&owned)
	tw.WriteHeader(&tar.Header{Name: "owned", Mode: 0o600, Uid: 1234, Gid: 5678, Typeflag: tar.TypeReg})
	tw.Close()
	want(t, d.do(t, "PUT", "/containers/web/archive?path=/etc&noOverwriteDirNonDir=true", &owned), http.StatusOK, nil)
	w = d.do(t, "GET", "/containers/web/archive?path=/etc/owned", nil)
	want(t, w, http.StatusOK, nil)
	if hdr, err := tar.NewReader(w.Body).Next(); err != nil || hdr.Uid != 1234 || hdr.Gid != 5678 {
		t.Fatalf("copied file: %+v, %v", hdr, err)
	}

	wantError(t, d.do(t, "GET", "/containers/web/archive?path=/nosuch", nil), http.StatusNotFound,
		"Could not find the file /nosuch in container web")
	want(t, d.do(t, "HEAD", "/containers/web/archive?path=/nosuch", nil), http.StatusNotFound, nil)
	wantError(t, d.do(t, "PUT", "/containers/web/archive?path=/etc/passwd", bytes.NewReader(tarball)), http.StatusBadRequest,
		"extraction point is not a directory")
	want(t, d.do(t, "PUT", "/containers/web/archive?path=/nosuch/dir", bytes.NewReader(tarball)), http.StatusNotFound, nil)
	// A file where the container has a directory is refused, as docker cp does.
	w = d.do(t, "PUT", "/containers/web/archive?path=/&noOverwriteDirNonDir=true", bytes.NewReader(ctrTar(t, map[string]string{"etc": "x"})))
	want(t, w, http.StatusBadRequest, nil)
	wantError(t, d.do(t, "GET", "/containers/web/archive", nil), http.StatusBadRequest, "Path cannot be empty")
	wantError(t, d.do(t, "GET", "/containers/nosuch/archive?path=/", nil), http.StatusNotFound, "No such container: nosuch")
	if mounts := mountsUnder(t, d.s.Root()); len(mounts) > 0 {
		t.Fatalf("mounts left: %v", mounts)
	}
}
