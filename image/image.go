// Package image is the image store: image configs (Docker and OCI) by
// content digest, and the references (name:tag, name@digest) that point at
// them. API STUB: filled in by the image-store work.
package image

import (
	"errors"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var errTODO = errors.New("image: not implemented yet")

// Image is one image: a config and what the store knows about it.
type Image struct {
	ID          digest.Digest // digest of Config
	Config      []byte        // the config as loaded, byte for byte
	Spec        ocispec.Image // Config parsed
	Parent      digest.Digest // local parent image, "" for none
	RepoTags    []string      // normalised, e.g. docker.io/library/busybox:latest
	RepoDigests []string
	Loaded      time.Time
}

// DiffIDs returns the image's layer diff IDs, base first.
func (i Image) DiffIDs() []digest.Digest { return i.Spec.RootFS.DiffIDs }

// Store is the image store.
type Store struct{}

// Create records config (idempotent) and returns the image.
func (s *Store) Create(config []byte) (Image, error) { return Image{}, errTODO }

// Get returns an image by full ID.
func (s *Store) Get(id digest.Digest) (Image, error) { return Image{}, errTODO }

// Resolve finds an image by reference, full or short ID, or name@digest.
func (s *Store) Resolve(ref string) (Image, error) { return Image{}, errTODO }

// List returns every image.
func (s *Store) List() ([]Image, error) { return nil, errTODO }

// Tag points ref at image id, moving it from any image it pointed at.
func (s *Store) Tag(id digest.Digest, ref string) error { return errTODO }

// SetParent records the local parent image of id.
func (s *Store) SetParent(id, parent digest.Digest) error { return errTODO }
