package imagearchive

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/errdefs"
)

// Media types of the Docker schema 2 documents that OCI's mirror.
const (
	mediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// annotationImageName is containerd's annotation for the full reference of
// an image in an index; Docker 25+ writes it too.
const annotationImageName = "io.containerd.image.name"

// maxIndexDepth bounds the nesting of indexes.
const maxIndexDepth = 4

// ociPlans reads the images listed in the index.json of an OCI layout.
func ociPlans(fs files) ([]*imagePlan, error) {
	if fs.Has(ocispec.ImageLayoutFile) {
		data, err := readBlob(fs, blob{name: ocispec.ImageLayoutFile, size: -1})
		if err != nil {
			return nil, err
		}
		var l ocispec.ImageLayout
		if err := json.Unmarshal(data, &l); err != nil {
			return nil, fmt.Errorf("%s: %v: %w", ocispec.ImageLayoutFile, err, errdefs.ErrInvalid)
		}
		if !strings.HasPrefix(l.Version, "1.") {
			return nil, fmt.Errorf("OCI layout version %q: %w", l.Version, errdefs.ErrNotSupported)
		}
	}
	data, err := readBlob(fs, blob{name: ocispec.ImageIndexFile, size: -1})
	if err != nil {
		return nil, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("%s: %v: %w", ocispec.ImageIndexFile, err, errdefs.ErrInvalid)
	}
	if len(idx.Manifests) == 0 {
		return nil, fmt.Errorf("%s lists no image: %w", ocispec.ImageIndexFile, errdefs.ErrInvalid)
	}
	plans := make([]*imagePlan, 0, len(idx.Manifests))
	for _, d := range idx.Manifests {
		m, err := readManifest(fs, d, 0)
		if err != nil {
			return nil, err
		}
		pl, err := ociPlan(fs, m)
		if err != nil {
			return nil, err
		}
		if ref := refFromAnnotations(d.Annotations); ref != nil {
			pl.refs = append(pl.refs, ref)
		}
		plans = append(plans, pl)
	}
	return plans, nil
}

// readManifest reads the image manifest d points at, choosing the one for
// this platform when d is an index.
func readManifest(fs files, d ocispec.Descriptor, depth int) (ocispec.Manifest, error) {
	if depth > maxIndexDepth {
		return ocispec.Manifest{}, fmt.Errorf("indexes nested more than %d deep: %w", maxIndexDepth, errdefs.ErrInvalid)
	}
	b, err := descriptorBlob(d)
	if err != nil {
		return ocispec.Manifest{}, err
	}
	data, err := readBlob(fs, b)
	if err != nil {
		return ocispec.Manifest{}, err
	}
	var doc struct {
		MediaType string            `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return ocispec.Manifest{}, fmt.Errorf("manifest %s: %v: %w", d.Digest, err, errdefs.ErrInvalid)
	}
	mediaType := d.MediaType
	if mediaType == "" {
		mediaType = doc.MediaType
	}
	if mediaType == "" && doc.Manifests != nil {
		mediaType = ocispec.MediaTypeImageIndex
	}
	switch mediaType {
	case ocispec.MediaTypeImageIndex, mediaTypeDockerList:
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return ocispec.Manifest{}, fmt.Errorf("index %s: %v: %w", d.Digest, err, errdefs.ErrInvalid)
		}
		pick, err := choosePlatform(idx.Manifests)
		if err != nil {
			return ocispec.Manifest{}, fmt.Errorf("index %s: %w", d.Digest, err)
		}
		return readManifest(fs, pick, depth+1)
	case ocispec.MediaTypeImageManifest, mediaTypeDockerManifest, "":
		var m ocispec.Manifest
		if err := json.Unmarshal(data, &m); err != nil {
			return ocispec.Manifest{}, fmt.Errorf("manifest %s: %v: %w", d.Digest, err, errdefs.ErrInvalid)
		}
		return m, nil
	}
	return ocispec.Manifest{}, fmt.Errorf("manifest %s has media type %q: %w", d.Digest, mediaType, errdefs.ErrNotSupported)
}

// choosePlatform picks the linux image for this machine's architecture from
// an index, or its only entry.
func choosePlatform(ds []ocispec.Descriptor) (ocispec.Descriptor, error) {
	for _, d := range ds {
		if p := d.Platform; p != nil && p.OS == "linux" && p.Architecture == runtime.GOARCH {
			return d, nil
		}
	}
	if len(ds) == 1 {
		return ds[0], nil
	}
	return ocispec.Descriptor{}, fmt.Errorf("no image for linux/%s among %d: %w", runtime.GOARCH, len(ds), errdefs.ErrNotFound)
}

func ociPlan(fs files, m ocispec.Manifest) (*imagePlan, error) {
	cb, err := descriptorBlob(m.Config)
	if err != nil {
		return nil, err
	}
	layers := make([]blob, len(m.Layers))
	for i, l := range m.Layers {
		if layers[i], err = descriptorBlob(l); err != nil {
			return nil, err
		}
	}
	return blobPlan(fs, cb, layers)
}

// refFromAnnotations returns the tag an index gives an image: containerd's
// full name if present, else the OCI ref name when it is a full reference
// ("app:1"). A bare tag ("1") names no repository: the image loads untagged.
func refFromAnnotations(a map[string]string) reference.NamedTagged {
	name := a[annotationImageName]
	if name == "" {
		name = a[ocispec.AnnotationRefName]
		if !strings.ContainsAny(name, ":/") {
			return nil
		}
	}
	ref, err := parseTag(name)
	if err != nil {
		return nil
	}
	return ref
}
