package imagearchive

import (
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/errdefs"
)

// manifestItem is one image of manifest.json, the index of docker save
// since Docker 1.10.
type manifestItem struct {
	Config       string
	RepoTags     []string
	Layers       []string
	Parent       digest.Digest                        `json:",omitempty"`
	LayerSources map[digest.Digest]ocispec.Descriptor `json:",omitempty"`
}

// dockerPlans reads the images listed in manifest.json.
func dockerPlans(fs files) ([]*imagePlan, error) {
	data, err := readBlob(fs, blob{name: "manifest.json", size: -1})
	if err != nil {
		return nil, err
	}
	var items []manifestItem
	if err := json.Unmarshal(data, &items); err != nil {
		return nil, fmt.Errorf("manifest.json: %v: %w", err, errdefs.ErrInvalid)
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("manifest.json lists no image: %w", errdefs.ErrInvalid)
	}
	plans := make([]*imagePlan, 0, len(items))
	for _, it := range items {
		pl, err := dockerPlan(fs, it)
		if err != nil {
			return nil, err
		}
		plans = append(plans, pl)
	}
	return plans, nil
}

func dockerPlan(fs files, it manifestItem) (*imagePlan, error) {
	cb, err := pathBlob(it.Config)
	if err != nil {
		return nil, err
	}
	layers := make([]blob, len(it.Layers))
	for i, l := range it.Layers {
		if layers[i], err = pathBlob(l); err != nil {
			return nil, err
		}
	}
	pl, err := blobPlan(fs, cb, layers)
	if err != nil {
		return nil, err
	}
	for _, t := range it.RepoTags {
		ref, err := parseTag(t)
		if err != nil {
			return nil, fmt.Errorf("manifest.json: %w", err)
		}
		pl.refs = append(pl.refs, ref)
	}
	if it.Parent != "" {
		if err := it.Parent.Validate(); err != nil {
			return nil, fmt.Errorf("manifest.json: parent %q: %v: %w", it.Parent, err, errdefs.ErrInvalid)
		}
		pl.parent = it.Parent
	}
	return pl, nil
}
