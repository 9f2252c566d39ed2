package daemon

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/strata-storage/strata/errdefs"
)

// The API versions served. A request without a /vX.Y prefix gets the newest.
const (
	minAPIVersion     = "1.24"
	defaultAPIVersion = "1.50"
)

// handlerFunc is what every route implements; vars holds the {name} path parts.
type handlerFunc func(w http.ResponseWriter, r *http.Request, vars map[string]string) error

// route is one endpoint. path is split at "/"; a segment "{x}" matches one
// segment, "{x...}" one or more, as many as leave the rest of the pattern
// to match the end of the path: image names carry "/", ":" and "@"
// unescaped (/images/localhost:5000/a/b:tag/json).
type route struct {
	method, path string
	h            handlerFunc
}

// match returns the path variables when p matches the segments of a path.
func (rt route) match(segs []string) (map[string]string, bool) {
	pat := strings.Split(strings.Trim(rt.path, "/"), "/")
	greedy := -1
	for i, s := range pat {
		if strings.HasSuffix(s, "...}") {
			greedy = i
		}
	}
	if greedy < 0 && len(segs) != len(pat) || greedy >= 0 && len(segs) < len(pat) {
		return nil, false
	}
	vars := map[string]string{}
	bind := func(p, s string) bool {
		if name, ok := strings.CutPrefix(p, "{"); ok {
			if s == "" {
				return false
			}
			vars[strings.TrimSuffix(strings.TrimSuffix(name, "}"), "...")] = s
			return true
		}
		return p == s
	}
	if greedy < 0 {
		for i := range pat {
			if !bind(pat[i], segs[i]) {
				return nil, false
			}
		}
		return vars, true
	}
	tail := len(pat) - greedy - 1
	for i := range greedy {
		if !bind(pat[i], segs[i]) {
			return nil, false
		}
	}
	for i := range tail {
		if !bind(pat[len(pat)-1-i], segs[len(segs)-1-i]) {
			return nil, false
		}
	}
	return vars, bind(pat[greedy], strings.Join(segs[greedy:len(segs)-tail], "/"))
}

// routes are all the endpoints. Routes are tried in order: fixed paths come
// before the greedy image-name patterns that could also match them.
func (d *Daemon) routes() []route {
	rs := []route{
		{"HEAD", "/_ping", d.ping},
		{"GET", "/_ping", d.ping},
		{"GET", "/version", d.version},
		{"GET", "/info", d.info},
		{"GET", "/system/df", d.systemDF},
	}
	rs = append(rs, d.imageRoutes()...)
	return append(rs, d.containerRoutes()...)
}

type versionKey struct{}

var versionPrefix = regexp.MustCompile(`^/v([0-9]+\.[0-9]+)(/|$)`)

// router dispatches a request to its route, after taking the version prefix
// off the path and checking it.
type router struct {
	routes []route
}

func (rt *router) serve(w http.ResponseWriter, r *http.Request) error {
	path := r.URL.Path
	version := defaultAPIVersion
	if m := versionPrefix.FindStringSubmatch(path); m != nil {
		version = m[1]
		path = strings.TrimPrefix(path, "/v"+version)
		if compareVersions(version, minAPIVersion) < 0 {
			return fmt.Errorf("client version %s is too old. Minimum supported API version is %s, please upgrade your client to a newer version: %w",
				version, minAPIVersion, errdefs.ErrInvalid)
		}
		if compareVersions(version, defaultAPIVersion) > 0 {
			return fmt.Errorf("client version %s is too new. Maximum supported API version is %s: %w", version, defaultAPIVersion, errdefs.ErrInvalid)
		}
	}
	r = r.WithContext(context.WithValue(r.Context(), versionKey{}, version))
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for _, route := range rt.routes {
		if route.method != r.Method {
			continue
		}
		if vars, ok := route.match(segs); ok {
			return route.h(w, r, vars)
		}
	}
	return notFound("page not found") // as Docker answers, for an unknown method too
}

// apiVersion is the negotiated API version of r: its /vX.Y prefix, or the
// newest served when it has none.
func apiVersion(r *http.Request) string {
	if v, ok := r.Context().Value(versionKey{}).(string); ok {
		return v
	}
	return defaultAPIVersion
}

// versionAtLeast reports whether r's API version is v or newer.
func versionAtLeast(r *http.Request, v string) bool {
	return compareVersions(apiVersion(r), v) >= 0
}

// compareVersions compares two "major.minor" versions as numbers.
func compareVersions(a, b string) int {
	am, an := splitVersion(a)
	bm, bn := splitVersion(b)
	if am != bm {
		return am - bm
	}
	return an - bn
}

func splitVersion(v string) (major, minor int) {
	ma, mi, _ := strings.Cut(v, ".")
	major, _ = strconv.Atoi(ma)
	minor, _ = strconv.Atoi(mi)
	return major, minor
}
