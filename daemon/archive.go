package daemon

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"path"
	"strings"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/errdefs"
)

// The /containers/{name}/archive endpoints serve docker cp: HEAD describes
// a path, GET returns a tar of it, PUT extracts a tar into a directory.
// GET and HEAD describe the path in the X-Docker-Container-Path-Stat
// header, base64 of JSON, without which the CLI refuses the copy.

const pathStatHeader = "X-Docker-Container-Path-Stat"

// archivePath returns the container and the path parameter of r.
func (d *Daemon) archivePath(r *http.Request, vars map[string]string) (container.Container, string, error) {
	p := r.URL.Query().Get("path")
	if p == "" {
		return container.Container{}, "", badRequest("Path cannot be empty")
	}
	c, err := d.store.Containers().Get(vars["name"])
	return c, p, err
}

func setPathStat(w http.ResponseWriter, st container.PathStat) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	w.Header().Set(pathStatHeader, base64.StdEncoding.EncodeToString(b))
	return nil
}

func (d *Daemon) statPath(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	c, p, err := d.archivePath(r, vars)
	if err != nil {
		return err
	}
	st, err := d.store.Containers().Stat(c, p)
	if err != nil {
		return err
	}
	if err := setPathStat(w, st); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (d *Daemon) copyFrom(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	c, p, err := d.archivePath(r, vars)
	if err != nil {
		return err
	}
	rc, st, err := d.tarOf(c, p)
	if err != nil {
		return err
	}
	defer rc.Close() // releases the container's mount
	if err := setPathStat(w, st); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := io.Copy(bw, rc); err != nil {
		return err
	}
	return bw.Flush()
}

// tarOf returns the tar of path p of c as Docker writes it. For a
// directory's content (".../."), that is "./" then "./name" entries: the
// "./" entry brings the directory's mode and owner to the destination.
func (d *Daemon) tarOf(c container.Container, p string) (io.ReadCloser, container.PathStat, error) {
	dir, contents := strings.CutSuffix(p, "/.")
	if !contents || path.Clean("/"+dir) == "/" {
		return d.store.Containers().CopyFrom(c, p)
	}
	rc, st, err := d.store.Containers().CopyFrom(c, dir)
	if err != nil || !st.Mode.IsDir() { // a symlink: "/." follows it
		if rc != nil {
			rc.Close()
		}
		return d.store.Containers().CopyFrom(c, p)
	}
	top := st.Name
	st.Name = "."
	return &rebased{ReadCloser: container.Rebase(rc, top, "."), src: rc}, st, nil
}

// rebased is a rebased tar whose source is closed with it.
type rebased struct {
	io.ReadCloser
	src io.Closer
}

func (r *rebased) Close() error { return errors.Join(r.ReadCloser.Close(), r.src.Close()) }

// copyTo extracts the request's tar into the directory path. The CLI sends
// it as text/plain: the type is not checked. noOverwriteDirNonDir is what
// the container store always does (docker cp always asks for it). The
// tar's owners are kept, as dockerd keeps them; with copyUIDGID (docker cp
// -a) everything goes to the container config's User when it names one,
// looked up in the container's passwd and group files where dockerd looks
// on the host's.
func (d *Daemon) copyTo(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	c, p, err := d.archivePath(r, vars)
	if err != nil {
		return err
	}
	opts := container.CopyToOptions{CopyUIDGID: true, AsUser: formBool(r.URL.Query().Get("copyUIDGID"))}
	err = d.store.Containers().CopyTo(c, p, r.Body, opts)
	if errors.Is(err, errdefs.ErrInvalid) && !d.isDir(c, p) {
		return badRequest("extraction point is not a directory") // Docker's words, which clients match
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// isDir reports whether p is a directory in c, a symlink there followed.
func (d *Daemon) isDir(c container.Container, p string) bool {
	st, err := d.store.Containers().Stat(c, p)
	if err == nil && st.Mode&fs.ModeSymlink != 0 {
		st, err = d.store.Containers().Stat(c, st.LinkTarget)
	}
	return err == nil && st.Mode.IsDir()
}
