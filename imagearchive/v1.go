package imagearchive

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/store"
)

// v1Layer is the json of one layer directory of the v1 layout: an image
// config of its own, linked to the layer below by parent.
type v1Layer struct {
	ID              string    `json:"id"`
	Parent          string    `json:"parent"`
	Created         time.Time `json:"created"`
	Author          string    `json:"author"`
	Comment         string    `json:"comment"`
	ContainerConfig struct {
		Cmd []string
	} `json:"container_config"`

	raw map[string]json.RawMessage
}

// v1Only are the keys of a v1 layer json that describe the layer, not the
// image, and so are left out of the image config built from it.
var v1Only = []string{"id", "parent", "Size", "parent_id", "layer_id", "throwaway", "checksum"}

// v1Plans reads the images tagged in "repositories" of a v1 archive. The v1
// layout names no diff IDs, so its layers are registered here, one after the
// other, and each image's config is built from the diff IDs computed.
func v1Plans(ctx context.Context, s *store.Store, lease *layer.Lease, fs files, p Progress) ([]*imagePlan, error) {
	data, err := readBlob(fs, blob{name: "repositories", size: -1})
	if err != nil {
		return nil, err
	}
	var repos map[string]map[string]string
	if err := json.Unmarshal(data, &repos); err != nil {
		return nil, fmt.Errorf("repositories: %v: %w", err, errdefs.ErrInvalid)
	}
	refs := make(map[string][]reference.NamedTagged)
	var tops []string
	for _, repo := range slices.Sorted(maps.Keys(repos)) {
		for _, tag := range slices.Sorted(maps.Keys(repos[repo])) {
			ref, err := parseTag(repo + ":" + tag)
			if err != nil {
				return nil, fmt.Errorf("repositories: %w", err)
			}
			id := repos[repo][tag]
			if _, ok := refs[id]; !ok {
				tops = append(tops, id)
			}
			refs[id] = append(refs[id], ref)
		}
	}
	if len(tops) == 0 {
		return nil, fmt.Errorf("repositories names no image: %w", errdefs.ErrInvalid)
	}
	// Check every chain before registering anything.
	chains := make([][]*v1Layer, len(tops))
	for i, id := range tops {
		if chains[i], err = v1Chain(fs, id); err != nil {
			return nil, err
		}
		for _, l := range chains[i] {
			if err := checkBlob(fs, v1LayerBlob(l.ID)); err != nil {
				return nil, err
			}
		}
	}
	registered := make(map[string]layer.Layer)
	plans := make([]*imagePlan, 0, len(tops))
	for i, chain := range chains {
		var parent digest.Digest
		diffIDs := make([]digest.Digest, 0, len(chain))
		for _, l := range chain {
			reg, ok := registered[l.ID]
			if !ok {
				if reg, err = registerV1Layer(ctx, s, lease, fs, l.ID, parent, p); err != nil {
					return nil, fmt.Errorf("loading layer %s: %w", l.ID, err)
				}
				registered[l.ID] = reg
			}
			parent = reg.ChainID
			diffIDs = append(diffIDs, reg.DiffID)
		}
		config, err := v1Config(chain, diffIDs)
		if err != nil {
			return nil, err
		}
		pl, err := newPlan(config)
		if err != nil {
			return nil, err
		}
		pl.refs = refs[tops[i]]
		plans = append(plans, pl)
	}
	return plans, nil
}

func v1LayerBlob(id string) blob { return blob{name: id + "/layer.tar", size: -1} }

// v1Chain reads the layer jsons from top down its parent links and returns
// them base first.
func v1Chain(fs files, top string) ([]*v1Layer, error) {
	var chain []*v1Layer
	seen := make(map[string]bool)
	for id := top; id != ""; {
		if digest.NewDigestFromEncoded(digest.SHA256, id).Validate() != nil {
			return nil, fmt.Errorf("v1 layer id %q is not 64 hex digits: %w", id, errdefs.ErrInvalid)
		}
		if seen[id] {
			return nil, fmt.Errorf("v1 layer %s is its own ancestor: %w", id, errdefs.ErrInvalid)
		}
		seen[id] = true
		data, err := readBlob(fs, blob{name: id + "/json", size: -1})
		if err != nil {
			return nil, err
		}
		l := &v1Layer{}
		if err := json.Unmarshal(data, l); err != nil {
			return nil, fmt.Errorf("%s/json: %v: %w", id, err, errdefs.ErrInvalid)
		}
		if err := json.Unmarshal(data, &l.raw); err != nil {
			return nil, fmt.Errorf("%s/json: %v: %w", id, err, errdefs.ErrInvalid)
		}
		if l.ID != "" && l.ID != id {
			return nil, fmt.Errorf("%s/json has id %q: %w", id, l.ID, errdefs.ErrInvalid)
		}
		l.ID = id
		chain = append(chain, l)
		id = l.Parent
	}
	slices.Reverse(chain)
	return chain, nil
}

func registerV1Layer(ctx context.Context, s *store.Store, lease *layer.Lease, fs files, id string, parent digest.Digest, p Progress) (layer.Layer, error) {
	b := v1LayerBlob(id)
	rc, size, err := fs.Open(b.name)
	if err != nil {
		return layer.Layer{}, err
	}
	defer rc.Close()
	r := newBlobReader(rc, b)
	r.showProgress(p, id[:12], size)
	defer r.Close()
	return s.Layers().Register(ctx, lease, parent, r)
}

// v1Config builds an image config from the top layer's json, as Docker
// 1.10 did when it migrated v1 images: the json without its layer keys, plus
// rootfs and one history entry per layer.
func v1Config(chain []*v1Layer, diffIDs []digest.Digest) ([]byte, error) {
	cfg := maps.Clone(chain[len(chain)-1].raw)
	for _, k := range v1Only {
		delete(cfg, k)
	}
	history := make([]ocispec.History, len(chain))
	for i, l := range chain {
		history[i] = ocispec.History{
			Author:    l.Author,
			Comment:   l.Comment,
			CreatedBy: strings.Join(l.ContainerConfig.Cmd, " "),
		}
		if !l.Created.IsZero() {
			history[i].Created = &l.Created
		}
	}
	var err error
	if cfg["rootfs"], err = json.Marshal(ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}); err != nil {
		return nil, err
	}
	if cfg["history"], err = json.Marshal(history); err != nil {
		return nil, err
	}
	return json.Marshal(cfg)
}
