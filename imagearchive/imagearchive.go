// Package imagearchive moves images between a store and the archives of
// docker save / docker load / docker import.
//
// Load reads three layouts, chosen by the files the archive holds:
//
//	manifest.json                  Docker 1.10+: [{Config, RepoTags, Layers, Parent}],
//	                               paths "<id>/layer.tar" or "blobs/sha256/<hex>"
//	index.json, oci-layout, blobs/ an OCI image layout (a tar or a directory)
//	repositories, <id>/json,       the v1 layout of Docker before 1.10: one
//	<id>/layer.tar, <id>/VERSION   directory per layer linked by "parent"
//
// Save writes what Docker 25+ writes: one tar holding both
//
//	blobs/sha256/<hex>   every layer tar (uncompressed), config and OCI manifest
//	index.json           one manifest descriptor per image and tag
//	oci-layout           {"imageLayoutVersion":"1.0.0"}
//	manifest.json        [{"Config":"blobs/sha256/..","RepoTags":[..],"Layers":[..]}]
//	repositories         {"name":{"tag":"<top layer hex>"}}
package imagearchive

import (
	"fmt"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/errdefs"
)

// Progress shows the bytes of each layer moving in or out of an archive, for
// progress bars. Its methods are called from several goroutines at once, for
// different layers.
type Progress interface {
	// Start announces layer id, of size bytes (-1 when unknown).
	Start(id string, size int64)
	// Advance reports n more bytes of layer id read or written.
	Advance(id string, n int64)
	// Done reports that layer id is finished with (complete or not).
	Done(id string)
}

// LoadOptions tune Load.
type LoadOptions struct {
	Progress Progress // nil = quiet
}

// Loaded is one image that Load put in the store.
type Loaded struct {
	ID       digest.Digest
	RepoTags []string // familiar form, e.g. busybox:latest; empty when untagged
}

// SaveOptions tune Save.
type SaveOptions struct {
	Progress Progress // nil = quiet
}

// ImportOptions tune Import.
type ImportOptions struct {
	Ref     string   // tag for the new image, "" = untagged
	Message string   // history comment, default "Imported from -"
	Changes []string // Dockerfile instructions, see image.ApplyChanges
}

// maxJSON bounds the JSON files read whole into memory: manifests, indexes,
// configs. Layers are always streamed.
const maxJSON = 16 << 20

// parseTag parses a reference that must name a tag; a bare name gets :latest.
func parseTag(ref string) (reference.NamedTagged, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("reference %q: %v: %w", ref, err, errdefs.ErrInvalid)
	}
	if _, ok := named.(reference.Digested); ok {
		return nil, fmt.Errorf("reference %q: a digest cannot be a tag: %w", ref, errdefs.ErrInvalid)
	}
	return reference.TagNameOnly(named).(reference.NamedTagged), nil
}

// shortID is the 12-hex form of a digest that progress bars show.
func shortID(d digest.Digest) string {
	e := d.Encoded()
	if len(e) > 12 {
		e = e[:12]
	}
	return e
}
