package imagearchive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"sync"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/store"
)

// Load reads an image archive from r into s and returns the images it held.
// r is read as a tar of any of the three layouts; an *os.File that is a
// directory is read as an unpacked archive (an OCI layout directory). A
// regular file is read in place; any other stream is first copied to an
// unlinked temporary file under <root>/tmp, so that layers can be
// registered in parallel.
//
// Every digest and size is verified. If anything is wrong the store is left
// as it was: layers are registered under one lease and images are created
// only once all their layers are in; on failure the lease ends and the
// layers it held are garbage collected.
func Load(ctx context.Context, s *store.Store, r io.Reader, opts LoadOptions) ([]Loaded, error) {
	fs, err := openFiles(ctx, r, filepath.Join(s.Root(), "tmp"))
	if err != nil {
		return nil, err
	}
	defer fs.Close()
	lease, err := s.Layers().NewLease()
	if err != nil {
		return nil, err
	}
	loaded, err := load(ctx, s, lease, fs, opts.Progress)
	err = errors.Join(err, lease.Release())
	if err != nil {
		if gcErr := s.GC(); gcErr != nil {
			err = errors.Join(err, fmt.Errorf("removing the layers of the failed load: %w", gcErr))
		}
		return nil, err
	}
	return loaded, nil
}

// imagePlan is an image found in an archive, checked and ready to register.
type imagePlan struct {
	config []byte // exact bytes, as the archive holds them
	id     digest.Digest
	spec   ocispec.Image
	layers []blob // one per diff ID, base first; nil once registered (v1)
	refs   []reference.NamedTagged
	parent digest.Digest // manifest.json's Parent, "" for none
}

func load(ctx context.Context, s *store.Store, lease *layer.Lease, fs files, p Progress) ([]Loaded, error) {
	var plans []*imagePlan
	var err error
	switch {
	case fs.Has("manifest.json"):
		plans, err = dockerPlans(fs)
	case fs.Has("index.json"):
		plans, err = ociPlans(fs)
	case fs.Has("repositories"):
		plans, err = v1Plans(ctx, s, lease, fs, p)
	default:
		err = fmt.Errorf("not an image archive: no manifest.json, index.json or repositories: %w", errdefs.ErrInvalid)
	}
	if err != nil {
		return nil, err
	}
	plans = mergePlans(plans)
	if err := checkParents(s, plans); err != nil {
		return nil, err
	}
	for _, pl := range plans {
		for _, b := range pl.layers {
			if err := checkBlob(fs, b); err != nil {
				return nil, err
			}
		}
	}
	for _, pl := range plans {
		if err := registerLayers(ctx, s, lease, fs, pl, p); err != nil {
			return nil, fmt.Errorf("loading image %s: %w", pl.id, err)
		}
	}
	return createImages(s, plans)
}

// blobPlan plans the image whose config is the blob config and whose
// layers, base first, are layers.
func blobPlan(fs files, config blob, layers []blob) (*imagePlan, error) {
	data, err := readBlob(fs, config)
	if err != nil {
		return nil, err
	}
	pl, err := newPlan(data)
	if err != nil {
		return nil, err
	}
	if err := pl.setLayers(layers); err != nil {
		return nil, err
	}
	return pl, nil
}

// newPlan checks an image config and starts its plan.
func newPlan(config []byte) (*imagePlan, error) {
	pl := &imagePlan{config: config, id: digest.FromBytes(config)}
	if err := json.Unmarshal(config, &pl.spec); err != nil {
		return nil, fmt.Errorf("image config %s: %v: %w", pl.id, err, errdefs.ErrInvalid)
	}
	if pl.spec.RootFS.Type != "layers" {
		return nil, fmt.Errorf("image config %s: rootfs type %q, want \"layers\": %w", pl.id, pl.spec.RootFS.Type, errdefs.ErrInvalid)
	}
	for _, d := range pl.spec.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("image config %s: diff ID %q: %v: %w", pl.id, d, err, errdefs.ErrInvalid)
		}
	}
	return pl, nil
}

// setLayers attaches the layer blobs of a manifest to the plan.
func (pl *imagePlan) setLayers(layers []blob) error {
	if len(layers) != len(pl.spec.RootFS.DiffIDs) {
		return fmt.Errorf("image %s: manifest lists %d layers, its config %d diff IDs: %w",
			pl.id, len(layers), len(pl.spec.RootFS.DiffIDs), errdefs.ErrInvalid)
	}
	pl.layers = layers
	return nil
}

// mergePlans joins the plans of one image listed several times (once per
// tag in an OCI index), keeping the first position.
func mergePlans(plans []*imagePlan) []*imagePlan {
	byID := make(map[digest.Digest]*imagePlan)
	var out []*imagePlan
	for _, pl := range plans {
		first, ok := byID[pl.id]
		if !ok {
			byID[pl.id] = pl
			out = append(out, pl)
			continue
		}
		for _, r := range pl.refs {
			if !slices.ContainsFunc(first.refs, func(f reference.NamedTagged) bool { return f.String() == r.String() }) {
				first.refs = append(first.refs, r)
			}
		}
		if first.parent == "" {
			first.parent = pl.parent
		}
	}
	return out
}

// checkParents makes sure that a parent named by manifest.json is an image
// of the archive or of the store whose layers are the child's first layers.
// A parent found in neither is dropped: the relation is local history only.
func checkParents(s *store.Store, plans []*imagePlan) error {
	inArchive := make(map[digest.Digest]*imagePlan)
	for _, pl := range plans {
		inArchive[pl.id] = pl
	}
	for _, pl := range plans {
		if pl.parent == "" {
			continue
		}
		var parentDiffIDs []digest.Digest
		if p, ok := inArchive[pl.parent]; ok {
			parentDiffIDs = p.spec.RootFS.DiffIDs
		} else if img, err := s.Images().Get(pl.parent); err == nil {
			parentDiffIDs = img.DiffIDs()
		} else {
			pl.parent = ""
			continue
		}
		diffIDs := pl.spec.RootFS.DiffIDs
		if len(parentDiffIDs) > len(diffIDs) || !slices.Equal(parentDiffIDs, diffIDs[:len(parentDiffIDs)]) {
			return fmt.Errorf("image %s: parent %s is not a base of it: %w", pl.id, pl.parent, errdefs.ErrInvalid)
		}
	}
	return nil
}

// registerLayers registers the layers of one image, in parallel where the
// layer store can, verifying each blob as it streams.
func registerLayers(ctx context.Context, s *store.Store, lease *layer.Lease, fs files, pl *imagePlan, p Progress) error {
	if len(pl.layers) == 0 {
		return nil
	}
	var (
		mu     sync.Mutex
		opened []*blobReader
	)
	defer func() {
		for _, r := range opened {
			r.rc.Close()
		}
	}()
	srcs := make([]layer.Source, len(pl.layers))
	for i, b := range pl.layers {
		diffID := pl.spec.RootFS.DiffIDs[i]
		srcs[i] = layer.Source{DiffID: diffID, Open: func() (io.ReadCloser, error) {
			rc, size, err := fs.Open(b.name)
			if err != nil {
				return nil, err
			}
			r := newBlobReader(rc, b)
			r.showProgress(p, shortID(diffID), size)
			mu.Lock()
			opened = append(opened, r)
			mu.Unlock()
			return r, nil
		}}
	}
	if _, err := s.Layers().RegisterChain(ctx, lease, "", srcs); err != nil {
		return err
	}
	// The layer store may stop reading at the end of the tar; the blob's
	// digest covers every byte.
	for _, r := range opened {
		if err := r.finish(); err != nil {
			return err
		}
	}
	return nil
}

// createImages records the images whose layers are all in, then the
// parents, which may be images of the same archive. An image already in the
// store with all its tags and its parent is left untouched.
func createImages(s *store.Store, plans []*imagePlan) ([]Loaded, error) {
	loaded := make([]Loaded, 0, len(plans))
	for _, pl := range plans {
		tags := make([]string, len(pl.refs))
		familiar := make([]string, len(pl.refs))
		for i, r := range pl.refs {
			tags[i] = r.String()
			familiar[i] = reference.FamiliarString(r)
		}
		existing, err := s.Images().Get(pl.id)
		if err != nil || slices.ContainsFunc(tags, func(t string) bool { return !slices.Contains(existing.RepoTags, t) }) {
			if _, err := s.CreateImage(pl.config, tags...); err != nil {
				return nil, fmt.Errorf("creating image %s: %w", pl.id, err)
			}
		}
		loaded = append(loaded, Loaded{ID: pl.id, RepoTags: familiar})
	}
	for _, pl := range plans {
		if pl.parent == "" {
			continue
		}
		if img, err := s.Images().Get(pl.id); err == nil && img.Parent == pl.parent {
			continue
		}
		if err := s.Images().SetParent(pl.id, pl.parent); err != nil {
			return nil, fmt.Errorf("image %s: setting parent: %w", pl.id, err)
		}
	}
	return loaded, nil
}
