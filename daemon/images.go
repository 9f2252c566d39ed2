package daemon

import (
	"errors"
	"net/http"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/imagearchive"
	"github.com/strata-storage/strata/store"
)

// imageRoutes are the image endpoints. The fixed paths come first: the
// greedy name patterns would match /images/json and /images/get too.
func (d *Daemon) imageRoutes() []route {
	return []route{
		{"GET", "/images/json", d.listImages},
		{"POST", "/images/load", d.loadImages},
		{"GET", "/images/get", d.saveImages},
		{"POST", "/images/create", d.createImage},
		{"GET", "/images/{name...}/json", d.inspectImage},
		{"GET", "/images/{name...}/history", d.imageHistory},
		{"GET", "/images/{name...}/get", d.saveImage},
		{"POST", "/images/{name...}/tag", d.tagImage},
		{"DELETE", "/images/{name...}", d.removeImage},
	}
}

// resolveImage finds the image ref names, with Docker's "No such image"
// message: the CLI prints it as is.
func (d *Daemon) resolveImage(ref string) (image.Image, error) {
	img, err := d.store.Images().Resolve(ref)
	if errors.Is(err, errdefs.ErrNotFound) {
		return img, noSuchImage(ref)
	}
	return img, err
}

func noSuchImage(ref string) error {
	if !strings.HasPrefix(ref, digest.SHA256.String()+":") {
		ref = familiar(ref)
	}
	return notFound("No such image: %s", ref)
}

// familiarAll turns normalised references into the familiar ones Docker
// shows (busybox:latest), never nil.
func familiarAll(refs []string) []string {
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		out = append(out, familiar(r))
	}
	return out
}

// imageSummary is one entry of GET /images/json.
type imageSummary struct {
	ID          string            `json:"Id"`
	ParentID    string            `json:"ParentId"`
	RepoTags    []string          `json:"RepoTags"`
	RepoDigests []string          `json:"RepoDigests"`
	Created     int64             `json:"Created"`
	Size        int64             `json:"Size"`
	SharedSize  int64             `json:"SharedSize"`
	VirtualSize *int64            `json:"VirtualSize,omitempty"` // before API 1.44
	Labels      map[string]string `json:"Labels"`
	Containers  int64             `json:"Containers"`
}

// imageFilter is the filters of GET /images/json.
type imageFilter struct {
	references           []string
	dangling             *bool
	before, since, until *time.Time
	labels, notLabels    []string
}

func (d *Daemon) newImageFilter(param string) (imageFilter, error) {
	var f imageFilter
	fs, err := parseFilters(param, "reference", "dangling", "before", "since", "until", "label", "label!")
	if err != nil {
		return f, err
	}
	f.references, f.labels, f.notLabels = fs["reference"], fs["label"], fs["label!"]
	for _, v := range fs["dangling"] {
		var b bool
		switch strings.ToLower(v) {
		case "true", "1":
			b = true
		case "false", "0":
		default:
			return f, badRequest("invalid filter 'dangling=%s'", v)
		}
		f.dangling = &b
	}
	for key, at := range map[string]**time.Time{"before": &f.before, "since": &f.since} {
		for _, ref := range fs[key] {
			img, err := d.resolveImage(ref)
			if err != nil {
				return f, err
			}
			t := created(img)
			*at = &t
		}
	}
	for _, v := range fs["until"] {
		t, err := parseTimestamp(v, time.Now())
		if err != nil {
			return f, err
		}
		f.until = &t
	}
	return f, nil
}

// parseTimestamp reads an until filter as Docker does: a duration before
// now ("10m"), Unix seconds ("1700000000.5"), or an RFC 3339 time or date.
func parseTimestamp(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		return now.Add(-d), nil
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Unix(0, int64(secs*1e9)), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, badRequest("invalid filter 'until=%s': not a duration, a Unix time or an RFC 3339 time", v)
}

// created is when img was built, or loaded when its config does not say.
func created(img image.Image) time.Time {
	if img.Spec.Created != nil {
		return *img.Spec.Created
	}
	return img.Loaded
}

// match reports whether img passes the filter and returns the references to
// show: with a reference filter, only those it matches.
func (f imageFilter) match(img image.Image) (tags, digests []string, ok bool) {
	tags, digests = familiarAll(img.RepoTags), familiarAll(img.RepoDigests)
	if f.dangling != nil && *f.dangling != (len(tags) == 0) {
		return nil, nil, false
	}
	at := created(img)
	if f.before != nil && !at.Before(*f.before) || f.since != nil && !at.After(*f.since) || f.until != nil && !at.Before(*f.until) {
		return nil, nil, false
	}
	for _, l := range f.labels {
		if !hasLabel(img.Spec.Config.Labels, l) {
			return nil, nil, false
		}
	}
	for _, l := range f.notLabels {
		if hasLabel(img.Spec.Config.Labels, l) {
			return nil, nil, false
		}
	}
	if len(f.references) > 0 {
		tags, digests = f.matchingRefs(tags), f.matchingRefs(digests)
		if len(tags)+len(digests) == 0 {
			return nil, nil, false
		}
	}
	return tags, digests, true
}

// hasLabel reports whether labels hold filter: "key" or "key=value".
func hasLabel(labels map[string]string, filter string) bool {
	k, v, hasValue := strings.Cut(filter, "=")
	got, present := labels[k]
	return present && (!hasValue || got == v)
}

// matchingRefs keeps the references a reference pattern matches, as Docker
// does: a shell pattern against the familiar reference or its name alone.
func (f imageFilter) matchingRefs(refs []string) []string {
	out := []string{}
	for _, r := range refs {
		named, err := reference.ParseNormalizedNamed(r)
		if err != nil {
			continue
		}
		for _, pattern := range f.references {
			full, _ := path.Match(pattern, reference.FamiliarString(named))
			name, _ := path.Match(pattern, reference.FamiliarName(named))
			if full || name {
				out = append(out, r)
				break
			}
		}
	}
	return out
}

func (d *Daemon) listImages(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	q := r.URL.Query()
	filter, err := d.newImageFilter(q.Get("filters"))
	if err != nil {
		return err
	}
	imgs, err := d.store.Images().List()
	if err != nil {
		return err
	}
	hasChildren := map[digest.Digest]bool{}
	for _, img := range imgs {
		if img.Parent != "" {
			hasChildren[img.Parent] = true
		}
	}
	var shared map[digest.Digest]int64 // with shared-size=1 only: it reads every layer
	if formBool(q.Get("shared-size")) {
		layers, err := d.store.Layers().List()
		if err != nil {
			return err
		}
		shared = sharedSizes(imgs, layers)
	}
	sort.SliceStable(imgs, func(i, j int) bool { return created(imgs[i]).After(created(imgs[j])) })
	out := []imageSummary{}
	for _, img := range imgs {
		// Intermediate images (untagged parents of others) only with all.
		if !formBool(q.Get("all")) && len(img.RepoTags)+len(img.RepoDigests) == 0 && hasChildren[img.ID] {
			continue
		}
		tags, digests, ok := filter.match(img)
		if !ok {
			continue
		}
		s, err := d.imageSummary(r, img)
		if err != nil {
			return err
		}
		s.RepoTags, s.RepoDigests = tags, digests
		if shared != nil {
			s.SharedSize = shared[img.ID]
		}
		out = append(out, s)
	}
	return writeJSON(w, http.StatusOK, out)
}

// imageSummary is img as listed; SharedSize and Containers are -1, "not
// computed", as Docker lists them outside system df.
func (d *Daemon) imageSummary(r *http.Request, img image.Image) (imageSummary, error) {
	size, err := d.store.ImageSize(img)
	if err != nil {
		return imageSummary{}, err
	}
	s := imageSummary{
		ID:          img.ID.String(),
		RepoTags:    familiarAll(img.RepoTags),
		RepoDigests: familiarAll(img.RepoDigests),
		Created:     created(img).Unix(),
		Size:        size,
		SharedSize:  -1,
		Labels:      img.Spec.Config.Labels,
		Containers:  -1,
	}
	if img.Parent != "" {
		s.ParentID = img.Parent.String()
	}
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	if !versionAtLeast(r, "1.44") {
		s.VirtualSize = &size
	}
	return s, nil
}

func (d *Daemon) inspectImage(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	img, err := d.resolveImage(vars["name"])
	if err != nil {
		return err
	}
	in, err := d.store.InspectImage(img)
	if err != nil {
		return err
	}
	in.RepoTags, in.RepoDigests = familiarAll(in.RepoTags), familiarAll(in.RepoDigests)
	if versionAtLeast(r, "1.45") { // gone from the API since
		in.Container, in.ContainerConfig = "", nil
	}
	if versionAtLeast(r, "1.44") {
		return writeJSON(w, http.StatusOK, in)
	}
	return writeJSON(w, http.StatusOK, struct {
		store.ImageInspect
		VirtualSize int64 `json:"VirtualSize"`
	}{in, in.Size})
}

// historyEntry is one entry of GET /images/{name}/history.
type historyEntry struct {
	ID        string   `json:"Id"`
	Created   int64    `json:"Created"`
	CreatedBy string   `json:"CreatedBy"`
	Tags      []string `json:"Tags"`
	Size      int64    `json:"Size"`
	Comment   string   `json:"Comment"`
}

func (d *Daemon) imageHistory(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	img, err := d.resolveImage(vars["name"])
	if err != nil {
		return err
	}
	hist, err := d.store.History(img)
	if err != nil {
		return err
	}
	out := make([]historyEntry, 0, len(hist))
	for _, h := range hist { // named by the image and its local parents, as store.History does
		e := historyEntry{ID: h.ID, CreatedBy: h.CreatedBy, Size: h.Size, Comment: h.Comment}
		if !h.Created.IsZero() {
			e.Created = h.Created.Unix()
		}
		if len(h.Tags) > 0 {
			e.Tags = familiarAll(h.Tags)
		}
		out = append(out, e)
	}
	return writeJSON(w, http.StatusOK, out)
}

// tagImage is POST /images/{name}/tag?repo=&tag=: 201 with no body.
func (d *Daemon) tagImage(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	q := r.URL.Query()
	ref, err := tagReference(q.Get("repo"), q.Get("tag"))
	if err != nil {
		return err
	}
	img, err := d.resolveImage(vars["name"])
	if err != nil {
		return err
	}
	if err := d.store.Images().Tag(img.ID, ref); err != nil {
		return err
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

// tagReference checks the repo and tag of a tag request as Docker does:
// a tag, never a digest, and no name that reads as an image ID or a
// digest algorithm, which would make references ambiguous.
func tagReference(repo, tag string) (string, error) {
	if repo == "" {
		return "", badRequest("repository name must have at least one component")
	}
	named, err := reference.ParseNormalizedNamed(repo)
	if err != nil {
		return "", badRequest("%v", err)
	}
	if _, digested := named.(reference.Digested); digested {
		return "", badRequest("refusing to create a tag with a digest reference")
	}
	if _, tagged := named.(reference.Tagged); tagged && tag != "" {
		return "", badRequest("invalid reference format: repository %q already has a tag", repo)
	}
	if tag != "" {
		t, err := reference.WithTag(named, tag)
		if err != nil {
			return "", badRequest("invalid tag format")
		}
		named = t
	}
	named = reference.TagNameOnly(named)
	if reference.FamiliarName(named) == digest.SHA256.String() {
		return "", badRequest("refusing to create an ambiguous tag using digest algorithm as name")
	}
	return named.String(), nil
}

// removed is one entry of DELETE /images/{name}.
type removed struct {
	Untagged string `json:"Untagged,omitempty"`
	Deleted  string `json:"Deleted,omitempty"`
}

// removeImage is rmi.
func (d *Daemon) removeImage(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	ref := vars["name"]
	if _, err := d.resolveImage(ref); err != nil {
		return err
	}
	q := r.URL.Query()
	rs, err := d.store.RemoveImage(ref, store.RemoveImageOptions{Force: formBool(q.Get("force")), NoPrune: formBool(q.Get("noprune"))})
	if errors.Is(err, errdefs.ErrNotFound) { // removed meanwhile
		return noSuchImage(ref)
	}
	if err != nil {
		return err
	}
	out := make([]removed, 0, len(rs))
	for _, x := range rs {
		if x.Untagged != "" {
			out = append(out, removed{Untagged: familiar(x.Untagged)})
		} else {
			out = append(out, removed{Deleted: x.Deleted})
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

// createImage is POST /images/create: docker import when fromSrc is "-"
// (the tar is the body), else a pull, which strata does not do yet: the
// CLI prints the message after "Unable to find image ... locally".
func (d *Daemon) createImage(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	q := r.URL.Query()
	switch q.Get("fromSrc") {
	case "":
		return notSupported("pulling images is not supported by strata yet")
	case "-":
	default:
		return notSupported("importing from a URL is not supported by strata yet: download it and import the file")
	}
	opts := imagearchive.ImportOptions{Message: q.Get("message"), Changes: q["changes"]}
	if repo := q.Get("repo"); repo != "" {
		ref, err := tagReference(repo, q.Get("tag"))
		if err != nil {
			return err
		}
		opts.Ref = ref
	}
	img, err := imagearchive.Import(r.Context(), d.store, r.Body, opts)
	if err != nil {
		return err
	}
	// The CLI prints the status of the stream's one message: the image ID.
	return newJSONStream(w).write(streamMessage{Status: img.ID.String()})
}
