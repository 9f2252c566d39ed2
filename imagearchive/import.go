package imagearchive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/store"
)

// importConfig is the config docker import writes: an OCI config plus the
// top-level comment of Docker's own format.
type importConfig struct {
	ocispec.Image
	Comment string `json:"comment,omitempty"`
}

// Import makes a one-layer image from a root file system tar (plain, gzip
// or zstd), as docker import does, applying opts.Changes to its config.
func Import(ctx context.Context, s *store.Store, r io.Reader, opts ImportOptions) (image.Image, error) {
	cfg, err := image.ApplyChanges(ocispec.ImageConfig{}, opts.Changes)
	if err != nil {
		return image.Image{}, err
	}
	var tags []string
	if opts.Ref != "" {
		ref, err := parseTag(opts.Ref)
		if err != nil {
			return image.Image{}, err
		}
		tags = append(tags, ref.String())
	}
	lease, err := s.Layers().NewLease()
	if err != nil {
		return image.Image{}, err
	}
	img, err := importLayer(ctx, s, lease, r, cfg, opts.Message, tags)
	err = errors.Join(err, lease.Release())
	if err != nil {
		if gcErr := s.GC(); gcErr != nil {
			err = errors.Join(err, fmt.Errorf("removing the layer of the failed import: %w", gcErr))
		}
		return image.Image{}, err
	}
	return img, nil
}

func importLayer(ctx context.Context, s *store.Store, lease *layer.Lease, r io.Reader, cfg ocispec.ImageConfig, msg string, tags []string) (image.Image, error) {
	l, err := s.Layers().Register(ctx, lease, "", r)
	if err != nil {
		return image.Image{}, fmt.Errorf("importing layer: %w", err)
	}
	if msg == "" {
		msg = "Imported from -"
	}
	now := time.Now().UTC()
	config, err := json.Marshal(importConfig{
		Image: ocispec.Image{
			Created:  &now,
			Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
			Config:   cfg,
			RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{l.DiffID}},
			History:  []ocispec.History{{Created: &now, Comment: msg}},
		},
		Comment: msg,
	})
	if err != nil {
		return image.Image{}, err
	}
	return s.CreateImage(config, tags...)
}
