package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/layer"
)

// CommitOptions tune Commit, as docker commit's flags do.
type CommitOptions struct {
	Ref     string   // REPOSITORY[:TAG] to tag the image with; "" for none
	Message string   // the comment of the new history entry (-m)
	Author  string   // (-a)
	Changes []string // Dockerfile instructions applied to the config (-c)
}

// emptyTarDiffID is the diff ID of a layer tar without entries: Docker
// adds no layer for it, only a history entry marked empty_layer.
const emptyTarDiffID = digest.Digest("sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef")

// Commit turns what the container changed into a layer on top of its
// image's layers and records an image of it, whose config is the image's
// with the fields docker commit writes: "config" (the container's config
// with opts.Changes applied), "container", "container_config", "created",
// "author" and a history entry; its parent is the container's image.
func (s *Store) Commit(ctx context.Context, containerRef string, opts CommitOptions) (image.Image, error) {
	c, err := s.Containers().Get(containerRef)
	if err != nil {
		return image.Image{}, err
	}
	var tags []string
	if opts.Ref != "" {
		named, err := image.Normalize(opts.Ref)
		if err != nil {
			return image.Image{}, err
		}
		if _, ok := named.(reference.Digested); ok {
			return image.Image{}, fmt.Errorf("reference %q: a commit is tagged, not named by digest: %w", opts.Ref, errdefs.ErrInvalid)
		}
		tags = append(tags, named.String())
	}
	config, containerConfig, err := commitConfigs(c, opts.Changes)
	if err != nil {
		return image.Image{}, err
	}
	parent, err := s.parentConfig(c)
	if err != nil {
		return image.Image{}, err
	}
	lease, err := s.layers.NewLease()
	if err != nil {
		return image.Image{}, err
	}
	img, l, err := s.commit(ctx, lease, c, parent, imageFields{config, containerConfig}, opts, tags)
	if err = errors.Join(err, lease.Release()); err != nil {
		if gcErr := s.GC(); gcErr != nil {
			err = errors.Join(err, fmt.Errorf("removing the layer of the failed commit: %w", gcErr))
		}
		return image.Image{}, err
	}
	if l.DiffID == emptyTarDiffID {
		// The empty layer is in no image. Should this fail, the next
		// Open collects it: the commit itself is done.
		_ = s.GC()
	}
	return img, nil
}

// imageFields are the container's configs as the new image records them.
type imageFields struct {
	config, containerConfig json.RawMessage
}

func (s *Store) commit(ctx context.Context, lease *layer.Lease, c container.Container, parent parentImage, f imageFields, opts CommitOptions, tags []string) (image.Image, layer.Layer, error) {
	// The container's diff is against its init layer, whose files a commit leaves out.
	l, err := s.layers.RegisterDiff(ctx, lease, c.Top, c.ID, c.InitID())
	if err != nil {
		return image.Image{}, layer.Layer{}, fmt.Errorf("commit %s: %w", c.Name, err)
	}
	now := time.Now().UTC()
	var cmd struct{ Cmd []string }
	if err := json.Unmarshal(f.containerConfig, &cmd); err != nil {
		return image.Image{}, layer.Layer{}, err
	}
	entry := ocispec.History{
		Created:    &now,
		Author:     opts.Author,
		CreatedBy:  strings.Join(cmd.Cmd, " "),
		Comment:    opts.Message,
		EmptyLayer: l.DiffID == emptyTarDiffID,
	}
	diffIDs := parent.diffIDs
	if !entry.EmptyLayer {
		diffIDs = append(diffIDs, l.DiffID)
	}
	fields := parent.fields
	for _, k := range []string{"id", "parent", "comment", "docker_version"} {
		delete(fields, k) // what the parent's maker wrote about itself
	}
	set := map[string]any{
		"config":           f.config,
		"container":        c.ID,
		"container_config": f.containerConfig,
		"created":          now,
		"history":          append(parent.history, entry),
		"rootfs":           ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
	if opts.Author != "" {
		set["author"] = opts.Author
	} else {
		delete(fields, "author")
	}
	for k, v := range set {
		b, err := json.Marshal(v)
		if err != nil {
			return image.Image{}, layer.Layer{}, err
		}
		fields[k] = b
	}
	config, err := json.Marshal(fields)
	if err != nil {
		return image.Image{}, layer.Layer{}, err
	}
	img, err := s.createImage(config, parent.id, tags)
	return img, l, err
}

// parentImage is what a commit takes from the container's image.
type parentImage struct {
	id      digest.Digest              // "" when the image was removed
	fields  map[string]json.RawMessage // its config's top-level fields
	diffIDs []digest.Digest
	history []ocispec.History
}

// parentConfig returns the container's image; when it was removed (rmi -f)
// while the container kept its layers, a config of those layers.
func (s *Store) parentConfig(c container.Container) (parentImage, error) {
	img, err := s.images.Get(c.Image)
	if errors.Is(err, errdefs.ErrNotFound) {
		return s.layersOnly(c.Top)
	}
	if err != nil {
		return parentImage{}, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(img.Config, &fields); err != nil {
		return parentImage{}, fmt.Errorf("image %s: config: %w", img.ID, err)
	}
	return parentImage{id: img.ID, fields: fields, diffIDs: img.DiffIDs(), history: img.Spec.History}, nil
}

// layersOnly is the parent of a commit whose image is gone: its layers,
// from the top layer's chain, and this machine's platform.
func (s *Store) layersOnly(top digest.Digest) (parentImage, error) {
	p := parentImage{fields: map[string]json.RawMessage{
		"architecture": json.RawMessage(fmt.Sprintf("%q", runtime.GOARCH)),
		"os":           json.RawMessage(`"linux"`),
	}}
	for chain := top; chain != ""; {
		l, err := s.layers.Get(chain)
		if err != nil {
			return parentImage{}, err
		}
		p.diffIDs = append([]digest.Digest{l.DiffID}, p.diffIDs...)
		chain = l.Parent
	}
	return p, nil
}

// commitConfigs returns the new image's "config", the container's config
// with changes applied, and its "container_config", the container's config
// as it is. Both name the container's image as "Image", as Docker's do;
// the fields that changes do not touch are kept byte for byte.
func commitConfigs(c container.Container, changes []string) (config, containerConfig json.RawMessage, err error) {
	fields := map[string]json.RawMessage{}
	if len(c.Config) > 0 && !bytes.Equal(c.Config, []byte("null")) {
		if err := json.Unmarshal(c.Config, &fields); err != nil {
			return nil, nil, fmt.Errorf("container %s: config: %w", c.Name, err)
		}
	}
	ref, err := json.Marshal(c.ImageRef)
	if err != nil {
		return nil, nil, err
	}
	fields["Image"] = ref
	if containerConfig, err = json.Marshal(fields); err != nil {
		return nil, nil, err
	}
	var before ocispec.ImageConfig
	if err := json.Unmarshal(containerConfig, &before); err != nil {
		return nil, nil, fmt.Errorf("container %s: config: %w", c.Name, err)
	}
	after, err := image.ApplyChanges(before, changes)
	if err != nil {
		return nil, nil, err
	}
	oldFields, err := topLevel(before)
	if err != nil {
		return nil, nil, err
	}
	newFields, err := topLevel(after)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range oldFields {
		if !bytes.Equal(v, newFields[k]) {
			delete(fields, k)
		}
	}
	for k, v := range newFields {
		if !bytes.Equal(v, oldFields[k]) {
			fields[k] = v
		}
	}
	config, err = json.Marshal(fields)
	return config, containerConfig, err
}

// topLevel returns the JSON fields v marshals to.
func topLevel(v any) (map[string]json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	err = json.Unmarshal(b, &fields)
	return fields, err
}
