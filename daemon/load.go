package daemon

import (
	"net/http"
	"sync"

	"github.com/strata-storage/strata/imagearchive"
)

// loadImages is docker load: the archive is the request body. Unless
// quiet, each layer's progress streams as it is read; an error before the
// first message is an ordinary error response, after it the stream's last
// message, as Docker does.
func (d *Daemon) loadImages(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	stream := newJSONStream(w)
	var opts imagearchive.LoadOptions
	if !formBool(r.URL.Query().Get("quiet")) {
		opts.Progress = &loadProgress{stream: stream, layers: map[string]*layerProgress{}}
	}
	loaded, err := imagearchive.Load(r.Context(), d.store, r.Body, opts)
	if err == nil {
		for _, img := range loaded {
			if len(img.RepoTags) == 0 {
				err = stream.Stream("Loaded image ID: " + img.ID.String())
			}
			for _, t := range img.RepoTags {
				if err == nil {
					err = stream.Stream("Loaded image: " + t)
				}
			}
		}
	}
	if err != nil && stream.Started() {
		if werr := stream.Error(err); werr != nil {
			d.log.Warn("load: error not sent", "err", err, "send", werr)
		}
		return nil
	}
	return err
}

// loadProgress sends imagearchive's layer progress as "Loading layer"
// messages. Layers are read in parallel and report every read, so a layer
// sends a message only when its bar moves, as the CLI draws it.
type loadProgress struct {
	stream *jsonStream
	mu     sync.Mutex
	layers map[string]*layerProgress
}

type layerProgress struct {
	current, total int64
	shown          int64 // bar position last sent
}

// barSteps is the resolution of the messages sent: one per 2% of a layer,
// or per megabyte when its size is unknown.
const barSteps = 50

func (p *loadProgress) position(l *layerProgress) int64 {
	if l.total > 0 {
		return l.current * barSteps / l.total
	}
	return l.current >> 20
}

func (p *loadProgress) Start(id string, size int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.layers[id] = &layerProgress{total: size}
	p.send(id, p.layers[id])
}

func (p *loadProgress) Advance(id string, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.layers[id]
	if l == nil {
		return
	}
	l.current += n
	if pos := p.position(l); pos != l.shown {
		l.shown = pos
		p.send(id, l)
	}
}

func (p *loadProgress) Done(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.layers[id]; l != nil {
		if l.current != l.total {
			p.send(id, l)
		}
		delete(p.layers, id)
	}
}

// send writes one message; the stream's errors (the client went away)
// surface as the load's own, through the request's context.
func (p *loadProgress) send(id string, l *layerProgress) {
	total := max(l.total, 0)
	_ = p.stream.Progress(id, "Loading layer", l.current, total)
}

// saveImages is docker save of one or more images: GET /images/get?names=.
func (d *Daemon) saveImages(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	return d.save(w, r, r.URL.Query()["names"])
}

// saveImage is GET /images/{name}/get.
func (d *Daemon) saveImage(w http.ResponseWriter, r *http.Request, vars map[string]string) error {
	return d.save(w, r, []string{vars["name"]})
}

// save writes the tar of refs. Every name is resolved first, so that a
// missing one is a 404 rather than a truncated archive.
func (d *Daemon) save(w http.ResponseWriter, r *http.Request, refs []string) error {
	if len(refs) == 0 {
		return badRequest("no images to save: give names")
	}
	for _, ref := range refs {
		if _, err := d.resolveImage(ref); err != nil {
			return err
		}
	}
	w.Header().Set("Content-Type", "application/x-tar")
	return imagearchive.Save(r.Context(), d.store, w, refs, imagearchive.SaveOptions{})
}
