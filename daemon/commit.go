package daemon

import (
	"net/http"
	"slices"

	"github.com/strata-storage/strata/store"
)

// commit is POST /commit: the container's changes as a new image, tagged
// repo:tag when repo is given. pause is accepted and has nothing to pause.
func (d *Daemon) commit(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	q := r.URL.Query()
	opts := store.CommitOptions{
		Message: q.Get("comment"),
		Author:  q.Get("author"),
		Changes: slices.DeleteFunc(q["changes"], func(c string) bool { return c == "" }),
	}
	if repo := q.Get("repo"); repo != "" {
		opts.Ref = repo
		if tag := q.Get("tag"); tag != "" {
			opts.Ref += ":" + tag
		}
	}
	img, err := d.store.Commit(r.Context(), q.Get("container"), opts)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, struct {
		ID string `json:"Id"`
	}{img.ID.String()})
}
