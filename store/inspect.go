package store

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/layer"
)

// This file turns store records into the views that `images`, `image
// inspect` and `history` show, so that the CLI and the daemon print the same.

// ImageSize returns the virtual size of img: the content bytes of all its
// layers.
func (s *Store) ImageSize(img image.Image) (int64, error) {
	layers, err := s.imageLayers(img)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, l := range layers {
		n += l.Size
	}
	return n, nil
}

// imageLayers returns img's layers, base first.
func (s *Store) imageLayers(img image.Image) ([]layer.Layer, error) {
	diffIDs := img.DiffIDs()
	layers := make([]layer.Layer, 0, len(diffIDs))
	for i := range diffIDs {
		l, err := s.Layers().Get(layer.ChainID(diffIDs[:i+1]))
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", img.ID.Encoded()[:12], err)
		}
		layers = append(layers, l)
	}
	return layers, nil
}

// HistoryEntry is one line of `history`.
type HistoryEntry struct {
	ID        string // image ID for the top entry, "<missing>" otherwise
	Created   time.Time
	CreatedBy string
	Size      int64
	Comment   string
	Tags      []string
}

// History returns img's history, newest first, each non-empty entry sized
// by the layer it made.
func (s *Store) History(img image.Image) ([]HistoryEntry, error) {
	layers, err := s.imageLayers(img)
	if err != nil {
		return nil, err
	}
	var out []HistoryEntry
	li := 0
	for _, h := range img.Spec.History {
		e := HistoryEntry{ID: "<missing>", CreatedBy: h.CreatedBy, Comment: h.Comment}
		if h.Created != nil {
			e.Created = *h.Created
		}
		if !h.EmptyLayer && li < len(layers) {
			e.Size = layers[li].Size
			li++
		}
		out = append(out, e)
	}
	if len(out) == 0 { // configs without history: one line per layer
		for _, l := range layers {
			out = append(out, HistoryEntry{ID: "<missing>", Created: l.Created, Size: l.Size})
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	// As Docker does, the rows name the images of the local parent chain,
	// one per row from the newest; past the chain's end they are missing.
	for i := range out {
		out[i].ID, out[i].Tags = img.ID.String(), img.RepoTags
		if img.Parent == "" {
			break
		}
		if img, err = s.images.Get(img.Parent); err != nil {
			break
		}
	}
	return out, nil
}

// ImageInspect is `image inspect`'s JSON, in the Docker Engine API's shape.
type ImageInspect struct {
	ID              string          `json:"Id"`
	RepoTags        []string        `json:"RepoTags"`
	RepoDigests     []string        `json:"RepoDigests"`
	Parent          string          `json:"Parent"`
	Comment         string          `json:"Comment"`
	Created         string          `json:"Created,omitempty"`
	Container       string          `json:"Container,omitempty"`
	ContainerConfig json.RawMessage `json:"ContainerConfig,omitempty"`
	DockerVersion   string          `json:"DockerVersion"`
	Author          string          `json:"Author"`
	Config          json.RawMessage `json:"Config"`
	Architecture    string          `json:"Architecture"`
	Variant         string          `json:"Variant,omitempty"`
	Os              string          `json:"Os"`
	Size            int64           `json:"Size"`
	GraphDriver     GraphDriver     `json:"GraphDriver"`
	RootFS          RootFS          `json:"RootFS"`
	Metadata        struct {
		LastTagTime string `json:"LastTagTime,omitempty"`
	} `json:"Metadata"`
}

// GraphDriver names the driver and its data for the top layer.
type GraphDriver struct {
	Name string            `json:"Name"`
	Data map[string]string `json:"Data"`
}

// RootFS lists the diff IDs.
type RootFS struct {
	Type   string          `json:"Type"`
	Layers []digest.Digest `json:"Layers"`
}

// InspectImage returns the inspect view of img.
func (s *Store) InspectImage(img image.Image) (ImageInspect, error) {
	var raw struct {
		Container       string          `json:"container"`
		ContainerConfig json.RawMessage `json:"container_config"`
		DockerVersion   string          `json:"docker_version"`
		Config          json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(img.Config, &raw); err != nil {
		return ImageInspect{}, fmt.Errorf("image %s: config: %w", img.ID, err)
	}
	size, err := s.ImageSize(img)
	if err != nil {
		return ImageInspect{}, err
	}
	in := ImageInspect{
		ID:              img.ID.String(),
		RepoTags:        nonNil(img.RepoTags),
		RepoDigests:     nonNil(img.RepoDigests),
		Comment:         comment(img),
		Container:       raw.Container,
		ContainerConfig: raw.ContainerConfig,
		DockerVersion:   raw.DockerVersion,
		Author:          img.Spec.Author,
		Config:          raw.Config,
		Architecture:    img.Spec.Architecture,
		Variant:         img.Spec.Variant,
		Os:              img.Spec.OS,
		Size:            size,
		GraphDriver:     GraphDriver{Name: s.Driver().String(), Data: map[string]string{}},
		RootFS:          RootFS{Type: img.Spec.RootFS.Type, Layers: img.DiffIDs()},
	}
	if len(in.Config) == 0 {
		in.Config = json.RawMessage("null")
	}
	if img.Parent != "" {
		in.Parent = img.Parent.String()
	}
	if img.Spec.Created != nil {
		in.Created = img.Spec.Created.UTC().Format(time.RFC3339Nano)
	}
	if diffIDs := img.DiffIDs(); len(diffIDs) > 0 {
		top, err := s.Layers().Get(layer.ChainID(diffIDs))
		if err != nil {
			return ImageInspect{}, err
		}
		if data, err := s.Driver().Metadata(top.CacheID); err == nil {
			in.GraphDriver.Data = data
		}
	}
	return in, nil
}

// comment is the comment of the newest history entry, as Docker shows it.
func comment(img image.Image) string {
	if h := img.Spec.History; len(h) > 0 {
		return h[len(h)-1].Comment
	}
	return ""
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
