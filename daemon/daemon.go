// Package daemon serves the Docker Engine API (versions 1.24 to 1.50) over
// a strata store, so that the docker CLI and Docker SDKs drive strata's
// images and containers. Each handler is a thin call into the same library
// the strata CLI uses.
//
// On disk, besides the store's own layout (package store):
//
//	<root>/daemon.lock   flocked by the daemon serving the root; holds its pid
//	/run/strata.sock     the default listener, 0660, group "strata" when it exists
package daemon

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/strata-storage/strata/store"
)

// Daemon answers Engine API requests on one open store.
type Daemon struct {
	store *store.Store
	log   *slog.Logger
}

// New returns a daemon serving s, logging to log.
func New(s *store.Store, log *slog.Logger) *Daemon {
	return &Daemon{store: s, log: log}
}

// Handler returns the whole API: the /vX.Y prefixes, one log line per
// request, errors in the Engine API's shape.
func (d *Daemon) Handler() http.Handler {
	rt := &router{routes: d.routes()}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h := w.Header()
		h.Set("Api-Version", defaultAPIVersion)
		h.Set("Ostype", runtime.GOOS)
		h.Set("Docker-Experimental", "false")
		h.Set("Server", serverHeader())
		rec := &recorder{ResponseWriter: w}
		if err := d.serve(rt, rec, r); err != nil {
			if rec.status != 0 {
				// A tar cut short must not look whole: the client sees the
				// connection break (JSON streams send their errors in-band
				// and return none).
				d.log.Error("request failed after its response started", "method", r.Method, "path", r.URL.Path,
					"status", rec.status, "duration", time.Since(start), "bytes", rec.bytes, "err", err)
				panic(http.ErrAbortHandler)
			}
			writeError(rec, err)
		}
		if rec.status == 0 {
			rec.WriteHeader(http.StatusOK)
		}
		d.log.Info("request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
			"duration", time.Since(start), "bytes", rec.bytes)
	})
}

// serve runs the request's route and turns a panic into an error: a bug
// in one handler answers 500 and leaves the daemon serving.
func (d *Daemon) serve(rt *router, w http.ResponseWriter, r *http.Request) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			d.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error: %v", p)
		}
	}()
	return rt.serve(w, r)
}

// recorder remembers the status and counts the body bytes of a response.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

// Flush lets streams reach the client line by line.
func (r *recorder) Flush() {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// writeJSON writes v as a JSON response with status.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return encodeJSON(w, v)
}

func encodeJSON(w http.ResponseWriter, v any) error {
	return json.NewEncoder(w).Encode(v)
}
