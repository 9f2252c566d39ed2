package imagearchive

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/store"
)

// epoch is the modification time of every entry Save writes, so that the
// same images always give the same bytes.
var epoch = time.Unix(0, 0)

// savedImage is an image to save, with the tags to save it under.
type savedImage struct {
	img    image.Image
	tags   []reference.NamedTagged
	layers []layer.Layer // base first

	manifest []byte // its OCI manifest
}

// Save writes the images refs name to w as one tar that Docker 25+, skopeo
// and OCI tools read: an OCI layout plus manifest.json and repositories. A
// reference by name saves that tag; a bare name all tags of the repository;
// an ID the image untagged. Each blob is written once, layers streamed from
// the layer store byte for byte as they were loaded.
func Save(ctx context.Context, s *store.Store, w io.Writer, refs []string, opts SaveOptions) error {
	images, err := resolveSave(s, refs)
	if err != nil {
		return err
	}
	for _, si := range images {
		if err := si.prepare(s); err != nil {
			return err
		}
	}
	tw := tar.NewWriter(w)
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	written := make(map[digest.Digest]bool)
	for _, si := range images {
		for _, l := range si.layers {
			if written[l.DiffID] {
				continue
			}
			if err := writeLayer(ctx, s, tw, l, opts.Progress); err != nil {
				return err
			}
			written[l.DiffID] = true
		}
		for _, data := range [][]byte{si.img.Config, si.manifest} {
			d := digest.FromBytes(data)
			if written[d] {
				continue
			}
			if err := writeFile(tw, blobName(d), data); err != nil {
				return err
			}
			written[d] = true
		}
	}
	files, err := indexFiles(images)
	if err != nil {
		return err
	}
	for _, f := range files {
		if err := writeFile(tw, f.name, f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// resolveSave finds the images refs name, each once, in the order first named.
func resolveSave(s *store.Store, refs []string) ([]*savedImage, error) {
	if len(refs) == 0 {
		return nil, fmt.Errorf("no image to save: %w", errdefs.ErrInvalid)
	}
	var out []*savedImage
	add := func(img image.Image, tag reference.NamedTagged) {
		i := slices.IndexFunc(out, func(si *savedImage) bool { return si.img.ID == img.ID })
		if i < 0 {
			out = append(out, &savedImage{img: img})
			i = len(out) - 1
		}
		if tag != nil && !slices.ContainsFunc(out[i].tags, func(t reference.NamedTagged) bool { return t.String() == tag.String() }) {
			out[i].tags = append(out[i].tags, tag)
		}
	}
	for _, ref := range refs {
		named := namedRef(ref)
		if named != nil && reference.IsNameOnly(named) {
			all, err := repositoryTags(s, named)
			if err != nil {
				return nil, err
			}
			for _, a := range all {
				add(a.img, a.tag)
			}
			if len(all) > 0 {
				continue
			}
		}
		img, err := s.Images().Resolve(ref)
		if err != nil {
			return nil, err
		}
		var tag reference.NamedTagged
		if t, ok := named.(reference.NamedTagged); ok && slices.Contains(img.RepoTags, t.String()) {
			tag = t
		}
		add(img, tag)
	}
	return out, nil
}

// namedRef parses ref as a name, nil when it is an image ID or a digest
// reference: those save the image untagged.
func namedRef(ref string) reference.Named {
	if strings.HasPrefix(ref, "sha256:") {
		return nil
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil
	}
	if _, ok := named.(reference.Digested); ok {
		return nil
	}
	if t, ok := named.(reference.NamedTagged); ok {
		return t
	}
	return named
}

type taggedImage struct {
	img image.Image
	tag reference.NamedTagged
}

// repositoryTags returns every tag of the repository name, sorted.
func repositoryTags(s *store.Store, name reference.Named) ([]taggedImage, error) {
	imgs, err := s.Images().List()
	if err != nil {
		return nil, err
	}
	var out []taggedImage
	for _, img := range imgs {
		for _, t := range img.RepoTags {
			tag, err := parseTag(t)
			if err == nil && tag.Name() == name.Name() {
				out = append(out, taggedImage{img, tag})
			}
		}
	}
	slices.SortFunc(out, func(a, b taggedImage) int { return strings.Compare(a.tag.Tag(), b.tag.Tag()) })
	return out, nil
}

// prepare finds the image's layers and builds its OCI manifest: everything
// is known before the first byte is written, so layers can be streamed.
func (si *savedImage) prepare(s *store.Store) error {
	diffIDs := si.img.DiffIDs()
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageConfig,
			Digest:    si.img.ID,
			Size:      int64(len(si.img.Config)),
		},
		Layers: []ocispec.Descriptor{},
	}
	for i, diffID := range diffIDs {
		l, err := s.Layers().Get(layer.ChainID(diffIDs[:i+1]))
		if err != nil {
			return fmt.Errorf("image %s: layer %d: %w", si.img.ID, i, err)
		}
		if diffID.Algorithm() != digest.SHA256 {
			return fmt.Errorf("image %s: diff ID %s: %w", si.img.ID, diffID, errdefs.ErrNotSupported)
		}
		si.layers = append(si.layers, l)
		m.Layers = append(m.Layers, ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageLayer,
			Digest:    diffID,
			Size:      l.TarSize,
		})
	}
	var err error
	si.manifest, err = json.Marshal(m)
	return err
}

func blobName(d digest.Digest) string { return "blobs/sha256/" + d.Encoded() }

// writeLayer streams a layer tar into the archive, checking that it is the
// size the header announced and has the layer's diff ID.
func writeLayer(ctx context.Context, s *store.Store, tw *tar.Writer, l layer.Layer, p Progress) error {
	rc, err := s.Layers().TarStream(l.ChainID)
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.DiffID, err)
	}
	defer rc.Close()
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: blobName(l.DiffID), Mode: 0o644, Size: l.TarSize, ModTime: epoch}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	id := shortID(l.DiffID)
	if p != nil {
		p.Start(id, l.TarSize)
		defer p.Done(id)
	}
	digester := digest.SHA256.Digester()
	dst := io.MultiWriter(tw, digester.Hash())
	if p != nil {
		dst = io.MultiWriter(dst, progressWriter{p, id})
	}
	// One byte more than announced makes a longer stream an error.
	n, err := io.Copy(dst, io.LimitReader(ctxReader{ctx, rc}, l.TarSize+1))
	if err != nil && n <= l.TarSize {
		return fmt.Errorf("layer %s: %w", l.DiffID, err)
	}
	if n != l.TarSize {
		return fmt.Errorf("layer %s: tar stream has %d bytes, the layer store says %d", l.DiffID, n, l.TarSize)
	}
	if got := digester.Digest(); got != l.DiffID {
		return fmt.Errorf("layer %s: tar stream has digest %s", l.DiffID, got)
	}
	return nil
}

// progressWriter counts the bytes of a layer for Progress.
type progressWriter struct {
	p  Progress
	id string
}

func (w progressWriter) Write(b []byte) (int, error) {
	w.p.Advance(w.id, int64(len(b)))
	return len(b), nil
}

func writeFile(tw *tar.Writer, name string, data []byte) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

type namedFile struct {
	name string
	data []byte
}

// indexFiles builds the files that list the images: index.json, oci-layout,
// manifest.json and repositories, in the order they are written.
func indexFiles(images []*savedImage) ([]namedFile, error) {
	idx := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
	}
	manifest := make([]manifestItem, 0, len(images))
	repos := make(map[string]map[string]string)
	for _, si := range images {
		desc := ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageManifest,
			Digest:    digest.FromBytes(si.manifest),
			Size:      int64(len(si.manifest)),
		}
		if si.img.Spec.OS != "" {
			desc.Platform = &ocispec.Platform{
				Architecture: si.img.Spec.Architecture,
				OS:           si.img.Spec.OS,
				Variant:      si.img.Spec.Variant,
			}
		}
		item := manifestItem{Config: blobName(si.img.ID), Layers: []string{}}
		for _, l := range si.layers {
			item.Layers = append(item.Layers, blobName(l.DiffID))
		}
		if len(si.tags) == 0 {
			idx.Manifests = append(idx.Manifests, desc)
		}
		for _, t := range si.tags {
			d := desc
			d.Annotations = map[string]string{
				annotationImageName:       t.String(),
				ocispec.AnnotationRefName: t.Tag(),
			}
			idx.Manifests = append(idx.Manifests, d)
			item.RepoTags = append(item.RepoTags, reference.FamiliarString(t))
			if len(si.layers) > 0 {
				name := reference.FamiliarName(t)
				if repos[name] == nil {
					repos[name] = make(map[string]string)
				}
				repos[name][t.Tag()] = si.layers[len(si.layers)-1].DiffID.Encoded()
			}
		}
		if si.img.Parent != "" && slices.ContainsFunc(images, func(o *savedImage) bool { return o.img.ID == si.img.Parent }) {
			item.Parent = si.img.Parent
		}
		manifest = append(manifest, item)
	}
	var files []namedFile
	add := func(name string, v any) error {
		data, err := json.Marshal(v)
		if err != nil {
			return err
		}
		files = append(files, namedFile{name, data})
		return nil
	}
	if err := add(ocispec.ImageIndexFile, idx); err != nil {
		return nil, err
	}
	if err := add(ocispec.ImageLayoutFile, ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion}); err != nil {
		return nil, err
	}
	if err := add("manifest.json", manifest); err != nil {
		return nil, err
	}
	if len(repos) > 0 {
		if err := add("repositories", repos); err != nil {
			return nil, err
		}
	}
	return files, nil
}
