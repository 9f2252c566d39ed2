package daemon

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"

	"github.com/strata-storage/strata/archive"
	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/store"
)

// containerRoutes are the container endpoints: strata keeps container file
// systems and runs no process, so every container is "created".
func (d *Daemon) containerRoutes() []route {
	return []route{
		{"POST", "/containers/create", d.createContainer},
		{"GET", "/containers/json", d.listContainers},
		{"GET", "/containers/{name}/json", d.inspectContainer},
		{"GET", "/containers/{name}/changes", d.containerChanges},
		{"GET", "/containers/{name}/export", d.exportContainer},
		{"DELETE", "/containers/{name}", d.removeContainer},
		{"HEAD", "/containers/{name}/archive", d.statPath},
		{"GET", "/containers/{name}/archive", d.copyFrom},
		{"PUT", "/containers/{name}/archive", d.copyTo},
		{"POST", "/commit", d.commit},
	}
}

// createRequest is the part of docker create's body read first: the
// image. The whole body, less its host and network parts, merged with the
// image's config, is the container's config (mergeConfig), which inspect,
// ps and commit show. The container is made as store.CreateContainer makes
// one, with that config instead of the image's.
type createRequest struct {
	Image      string `json:"Image"`
	HostConfig struct {
		StorageOpt map[string]string `json:"StorageOpt"`
	} `json:"HostConfig"`
}

func (d *Daemon) createContainer(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	var req createRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return badRequest("invalid JSON: %v", err)
	}
	if req.Image == "" {
		return badRequest("config cannot be empty in order to create a container")
	}
	img, err := d.store.Images().Resolve(req.Image)
	if errors.Is(err, errdefs.ErrNotFound) {
		// A 404 in Docker's words makes the CLI pull the image and retry.
		return notFound("No such image: %s", familiar(req.Image))
	}
	if err != nil {
		return err
	}
	opts := container.CreateOptions{Name: r.URL.Query().Get("name"), StorageOpt: req.HostConfig.StorageOpt}
	if opts.Config, err = mergeConfig(body, img.Config); err != nil {
		return err
	}
	c, err := d.store.CreateContainer(req.Image, opts)
	if errors.Is(err, errdefs.ErrExists) {
		// Docker's name conflict message ends with a period, which the
		// container store's, being a Go error, does not.
		return fmt.Errorf("%s.: %w", strings.TrimSuffix(errdefs.Message(err), "."), errdefs.ErrExists)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, struct {
		ID       string   `json:"Id"`
		Warnings []string `json:"Warnings"`
	}{c.ID, []string{}})
}

// mergedFields are the fields of a container's config that dockerd fills
// from the image's when the request leaves them empty, or combines.
type mergedFields struct {
	User         string              `json:"User"`
	Env          []string            `json:"Env"`
	Cmd          strSlice            `json:"Cmd"`
	Entrypoint   strSlice            `json:"Entrypoint"`
	Shell        strSlice            `json:"Shell,omitempty"`
	WorkingDir   string              `json:"WorkingDir"`
	StopSignal   string              `json:"StopSignal,omitempty"`
	Labels       map[string]string   `json:"Labels"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Volumes      map[string]struct{} `json:"Volumes"`
	Healthcheck  json.RawMessage     `json:"Healthcheck,omitempty"`
}

// mergeConfig returns the config of a container created with the request
// body over an image of config imageConfig, as dockerd makes it: the
// request's fields, less HostConfig and NetworkingConfig, with the
// image's user, command, entrypoint, working dir, stop signal and health
// check where the request has none, and the image's environment, labels,
// ports and volumes added to the request's.
func mergeConfig(body, imageConfig json.RawMessage) (json.RawMessage, error) {
	fields := map[string]json.RawMessage{}
	var user mergedFields
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, badRequest("invalid JSON: %v", err)
	}
	if err := json.Unmarshal(body, &user); err != nil {
		return nil, badRequest("invalid config: %v", err)
	}
	var image struct {
		Config mergedFields `json:"config"`
	}
	if err := json.Unmarshal(imageConfig, &image); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	img := image.Config
	delete(fields, "HostConfig")
	delete(fields, "NetworkingConfig")

	m := user
	m.User = cmp.Or(m.User, img.User)
	m.WorkingDir = cmp.Or(m.WorkingDir, img.WorkingDir)
	m.StopSignal = cmp.Or(m.StopSignal, img.StopSignal)
	if len(m.Healthcheck) == 0 || string(m.Healthcheck) == "null" {
		m.Healthcheck = img.Healthcheck
	}
	if len(m.Entrypoint) == 0 {
		if len(m.Cmd) == 0 {
			m.Cmd, m.Shell = img.Cmd, img.Shell
		}
		if m.Entrypoint == nil { // [] clears the image's
			m.Entrypoint = img.Entrypoint
		}
	}
	for _, e := range img.Env {
		key, _, _ := strings.Cut(e, "=")
		if !slices.ContainsFunc(m.Env, func(u string) bool { k, _, _ := strings.Cut(u, "="); return k == key }) {
			m.Env = append(m.Env, e)
		}
	}
	m.Labels = union(m.Labels, img.Labels)
	m.ExposedPorts = union(m.ExposedPorts, img.ExposedPorts)
	if m.Volumes = union(m.Volumes, img.Volumes); len(m.Volumes) == 0 {
		m.Volumes = nil // dockerd shows none as null, whatever the CLI sent
	}

	merged, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(merged, &fields); err != nil {
		return nil, err
	}
	return json.Marshal(fields)
}

// strSlice is a command as the Engine API takes it: a list of words, or
// one string, which is one word.
type strSlice []string

func (s *strSlice) UnmarshalJSON(b []byte) error {
	var word string
	if string(b) == "null" {
		return nil
	}
	if json.Unmarshal(b, &word) == nil {
		*s = strSlice{word}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(s))
}

// union returns a with the keys of b it lacks; nil when both are empty.
func union[V any](a, b map[string]V) map[string]V {
	for k, v := range b {
		if a == nil {
			a = map[string]V{}
		}
		if _, ok := a[k]; !ok {
			a[k] = v
		}
	}
	return a
}

// familiar is ref as Docker names it in messages: busybox:latest; an ID
// or a name that does not parse stays as given.
func familiar(ref string) string {
	named, err := image.Normalize(ref)
	if err != nil {
		return ref
	}
	return reference.FamiliarString(named)
}

// containerSummary is one entry of GET /containers/json.
type containerSummary struct {
	ID              string            `json:"Id"`
	Names           []string          `json:"Names"`
	Image           string            `json:"Image"`
	ImageID         string            `json:"ImageID"`
	Command         string            `json:"Command"`
	Created         int64             `json:"Created"`
	Ports           []struct{}        `json:"Ports"`
	SizeRw          *int64            `json:"SizeRw,omitempty"`
	SizeRootFs      *int64            `json:"SizeRootFs,omitempty"`
	Labels          map[string]string `json:"Labels"`
	State           string            `json:"State"`
	Status          string            `json:"Status"`
	HostConfig      struct{ NetworkMode string }
	NetworkSettings struct{ Networks map[string]struct{} }
	Mounts          []struct{} `json:"Mounts"`
}

func (d *Daemon) listContainers(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	q := r.URL.Query()
	filter, err := newContainerFilter(d.store, q.Get("filters"))
	if err != nil {
		return err
	}
	limit, _ := strconv.Atoi(q.Get("limit"))
	// Without all, Docker lists running containers only: none here, unless
	// the client asks for a status or the last few.
	out := []containerSummary{}
	if !formBool(q.Get("all")) && limit <= 0 && filter["status"] == nil {
		return writeJSON(w, http.StatusOK, out)
	}
	cs, err := d.store.Containers().List()
	if err != nil {
		return err
	}
	for _, c := range cs {
		if limit > 0 && len(out) == limit {
			break
		}
		labels := containerLabels(c)
		if !filter.match(c, labels) {
			continue
		}
		s, err := d.summary(c, labels, formBool(q.Get("size")))
		if err != nil {
			return err
		}
		out = append(out, s)
	}
	return writeJSON(w, http.StatusOK, out)
}

func (d *Daemon) summary(c container.Container, labels map[string]string, size bool) (containerSummary, error) {
	path, args := store.Command(c)
	s := containerSummary{
		ID:      c.ID,
		Names:   []string{"/" + c.Name},
		Image:   c.ImageRef,
		ImageID: c.Image.String(),
		Command: strings.TrimSpace(path + " " + strings.Join(args, " ")),
		Created: c.Created.Unix(),
		Ports:   []struct{}{},
		Labels:  labels,
		State:   "created",
		Status:  "Created",
		Mounts:  []struct{}{},
	}
	// The reference shows while it still names the container's image.
	if img, err := d.store.Images().Resolve(c.ImageRef); err != nil || img.ID != c.Image {
		s.Image = c.Image.String()
	}
	s.HostConfig.NetworkMode = "default"
	s.NetworkSettings.Networks = map[string]struct{}{}
	if size {
		rw, rootfs, err := d.store.ContainerSize(c)
		if err != nil {
			return s, err
		}
		s.SizeRw, s.SizeRootFs = &rw, &rootfs
	}
	return s, nil
}

// containerLabels are the labels of c's config, never nil.
func containerLabels(c container.Container) map[string]string {
	var cfg struct{ Labels map[string]string }
	if len(c.Config) > 0 {
		json.Unmarshal(c.Config, &cfg) // checked when the image was loaded
	}
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	return cfg.Labels
}

// containerFilter is the filters parameter of GET /containers/json: values
// by key, any of which must match for each key given.
type containerFilter map[string][]string

// newContainerFilter parses filters in both forms clients send,
// {"name":{"x":true}} and {"name":["x"]}, and resolves ancestor images.
func newContainerFilter(s *store.Store, param string) (containerFilter, error) {
	f := containerFilter{}
	if param == "" {
		return f, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(param), &raw); err != nil {
		return nil, badRequest("invalid filters: %v", err)
	}
	for key, v := range raw {
		var list []string
		if err := json.Unmarshal(v, &list); err != nil {
			var set map[string]bool
			if err := json.Unmarshal(v, &set); err != nil {
				return nil, badRequest("invalid filter %q: %v", key, err)
			}
			for k, on := range set {
				if on {
					list = append(list, k)
				}
			}
		}
		switch key {
		case "id", "name", "label":
		case "status":
			for _, st := range list {
				if !validStatus[st] {
					return nil, badRequest("invalid filter 'status=%s'", st)
				}
			}
		case "ancestor": // an image: matched by ID
			for i, ref := range list {
				if img, err := s.Images().Resolve(ref); err == nil {
					list[i] = img.ID.String()
				}
			}
		case "before", "since": // a container: matched by creation time
			for i, ref := range list {
				c, err := s.Containers().Get(ref)
				if err != nil {
					return nil, err
				}
				list[i] = c.Created.Format(time.RFC3339Nano)
			}
		case "exited", "health", "expose", "publish", "network", "volume", "isolation", "is-task":
			// About running or networked containers: none here matches.
		default:
			return nil, badRequest("invalid filter '%s'", key)
		}
		f[key] = list
	}
	return f, nil
}

// validStatus are the states Docker knows; strata's containers are all
// "created".
var validStatus = map[string]bool{"created": true, "restarting": true, "running": true,
	"removing": true, "paused": true, "exited": true, "dead": true}

func (f containerFilter) match(c container.Container, labels map[string]string) bool {
	for key, values := range f {
		ok := false
		for _, v := range values {
			switch key {
			case "id":
				ok = strings.HasPrefix(c.ID, v)
			case "name": // a regular expression, as Docker has it
				re, err := regexp.Compile(v)
				ok = err == nil && re.MatchString("/"+c.Name)
			case "status":
				ok = v == "created"
			case "label":
				k, val, hasVal := strings.Cut(v, "=")
				got, present := labels[k]
				ok = present && (!hasVal || got == val)
			case "ancestor":
				ok = v == c.Image.String() || v == c.ImageRef
			case "before", "since":
				t, _ := time.Parse(time.RFC3339Nano, v)
				ok = key == "before" && c.Created.Before(t) || key == "since" && c.Created.After(t)
			}
			if ok {
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// containerJSON is GET /containers/{name}/json: the CLI's inspect view
// plus the runtime parts a container that never ran has.
type containerJSON struct {
	store.ContainerInspect
	HostConfig      hostConfig      `json:"HostConfig"`
	NetworkSettings networkSettings `json:"NetworkSettings"`
}

type hostConfig struct {
	NetworkMode   string `json:"NetworkMode"`
	RestartPolicy struct {
		Name              string `json:"Name"`
		MaximumRetryCount int    `json:"MaximumRetryCount"`
	} `json:"RestartPolicy"`
	LogConfig struct {
		Type   string            `json:"Type"`
		Config map[string]string `json:"Config"`
	} `json:"LogConfig"`
}

type networkSettings struct {
	Ports    map[string]struct{} `json:"Ports"`
	Networks map[string]struct{} `json:"Networks"`
}

func (d *Daemon) inspectContainer(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	c, err := d.store.Containers().Get(vars["name"])
	if err != nil {
		return err
	}
	in, err := d.store.InspectContainer(c, formBool(r.URL.Query().Get("size")))
	if err != nil {
		return err
	}
	out := containerJSON{ContainerInspect: in}
	out.HostConfig.NetworkMode = "default" // what the CLI sends; strata starts no network
	out.HostConfig.RestartPolicy.Name = "no"
	out.HostConfig.LogConfig.Type = "none"
	out.HostConfig.LogConfig.Config = map[string]string{}
	out.NetworkSettings.Ports = map[string]struct{}{}
	out.NetworkSettings.Networks = map[string]struct{}{}
	return writeJSON(w, http.StatusOK, out)
}

func (d *Daemon) containerChanges(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	c, err := d.store.Containers().Get(vars["name"])
	if err != nil {
		return err
	}
	changes, err := d.store.Containers().Changes(c)
	if err != nil {
		return err
	}
	type change struct {
		Path string
		Kind archive.ChangeKind // 0 modified, 1 added, 2 deleted: Docker's numbers
	}
	out := make([]change, 0, len(changes))
	for _, ch := range changes {
		out = append(out, change{ch.Path, ch.Kind})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (d *Daemon) exportContainer(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	c, err := d.store.Containers().Get(vars["name"])
	if err != nil {
		return err
	}
	// Nothing is sent before the first MB or the end: a failure to mount
	// is still an error response.
	w.Header().Set("Content-Type", "application/x-tar")
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := d.store.Containers().Export(c, bw); err != nil {
		return err
	}
	return bw.Flush()
}

func (d *Daemon) removeContainer(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	q := r.URL.Query()
	if formBool(q.Get("link")) {
		return badRequest("strata keeps no container links")
	}
	c, err := d.store.Containers().Get(vars["name"])
	if err != nil {
		return err
	}
	err = d.store.RemoveContainer(c, formBool(q.Get("force")))
	switch {
	case errors.Is(err, errdefs.ErrNotFound): // a parallel rm won
		return notFound("No such container: %s", vars["name"])
	case err != nil:
		return fmt.Errorf("cannot remove container %q: %w", vars["name"], err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// formBool reads a boolean query parameter as Docker does: empty, "0",
// "no", "false" and "none" are false, anything else true.
func formBool(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "0", "no", "false", "none":
		return false
	}
	return true
}
