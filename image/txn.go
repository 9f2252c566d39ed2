package image

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/layer"
)

var (
	bucketImages = []byte("images")
	bucketRefs   = []byte("refs")
)

// record is what images/<id> holds.
type record struct {
	Config []byte        `json:"config"`
	Parent digest.Digest `json:"parent,omitempty"`
	Loaded time.Time     `json:"loaded"`
	Top    digest.Digest `json:"top,omitempty"` // chain ID of the top layer
}

// Txn is the image store inside a caller's metadata transaction. Writes
// need a read-write transaction.
type Txn struct {
	tx *bolt.Tx
}

// NewTxn returns the image store as seen by tx.
func NewTxn(tx *bolt.Tx) Txn { return Txn{tx: tx} }

// TopChains returns the chain IDs of the top layers of all images: the roots
// that keep layers alive (a layer.RootsFunc).
func TopChains(tx *bolt.Tx) ([]digest.Digest, error) {
	var tops []digest.Digest
	err := NewTxn(tx).forEach(func(_ digest.Digest, r record) error {
		if r.Top != "" {
			tops = append(tops, r.Top)
		}
		return nil
	})
	return tops, err
}

// Create records config (idempotent) and returns the image.
func (t Txn) Create(config []byte) (Image, error) {
	var spec ocispec.Image
	if err := json.Unmarshal(config, &spec); err != nil {
		return Image{}, fmt.Errorf("image config: %v: %w", err, errdefs.ErrInvalid)
	}
	if spec.RootFS.Type != "layers" {
		return Image{}, fmt.Errorf("image config: rootfs type %q, want \"layers\": %w", spec.RootFS.Type, errdefs.ErrInvalid)
	}
	for _, d := range spec.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return Image{}, fmt.Errorf("image config: diff ID %q: %v: %w", d, err, errdefs.ErrInvalid)
		}
	}
	id := digest.FromBytes(config)
	if _, err := t.record(id); err == nil {
		return t.Get(id)
	}
	r := record{
		Config: config,
		Loaded: time.Now().UTC(),
		Top:    layer.ChainID(spec.RootFS.DiffIDs),
	}
	if err := t.put(id, r); err != nil {
		return Image{}, err
	}
	return Image{ID: id, Config: config, Spec: spec, Loaded: r.Loaded}, nil
}

// Get returns an image by full ID.
func (t Txn) Get(id digest.Digest) (Image, error) {
	r, err := t.record(id)
	if err != nil {
		return Image{}, err
	}
	refs, err := t.refsByImage()
	if err != nil {
		return Image{}, err
	}
	return newImage(id, r, refs[id])
}

// Resolve finds an image by reference (normalised), by full or unique
// short ID with or without "sha256:", or by name@digest.
func (t Txn) Resolve(ref string) (Image, error) {
	if hex, ok := strings.CutPrefix(ref, digest.SHA256.String()+":"); ok {
		return t.byIDPrefix(ref, hex)
	}
	if named, err := Normalize(ref); err == nil {
		if id := t.target(key(named)); id != "" {
			return t.Get(id)
		}
	}
	return t.byIDPrefix(ref, ref)
}

// byIDPrefix finds the one image whose ID's hex starts with prefix.
func (t Txn) byIDPrefix(ref, prefix string) (Image, error) {
	if prefix == "" || len(prefix) > 64 || strings.Trim(prefix, "0123456789abcdef") != "" {
		return Image{}, noSuchImage(ref)
	}
	b := t.tx.Bucket(bucketImages)
	if b == nil {
		return Image{}, noSuchImage(ref)
	}
	seek := []byte(digest.SHA256.String() + ":" + prefix)
	var found []digest.Digest
	c := b.Cursor()
	for k, _ := c.Seek(seek); k != nil && bytes.HasPrefix(k, seek); k, _ = c.Next() {
		found = append(found, digest.Digest(k))
	}
	switch len(found) {
	case 0:
		return Image{}, noSuchImage(ref)
	case 1:
		return t.Get(found[0])
	}
	return Image{}, fmt.Errorf("image ID prefix %q is ambiguous: it matches %d images: %w", prefix, len(found), errdefs.ErrInvalid)
}

// List returns every image, by ID.
func (t Txn) List() ([]Image, error) {
	refs, err := t.refsByImage()
	if err != nil {
		return nil, err
	}
	var imgs []Image
	err = t.forEach(func(id digest.Digest, r record) error {
		img, err := newImage(id, r, refs[id])
		imgs = append(imgs, img)
		return err
	})
	return imgs, err
}

// Children returns the images whose local parent is id.
func (t Txn) Children(id digest.Digest) ([]Image, error) {
	var children []digest.Digest
	err := t.forEach(func(child digest.Digest, r record) error {
		if r.Parent == id {
			children = append(children, child)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	imgs := make([]Image, 0, len(children))
	for _, c := range children {
		img, err := t.Get(c)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}

// Tag points ref at image id, moving it from any image it pointed at. A
// name@digest reference is recorded as one of the image's RepoDigests.
func (t Txn) Tag(id digest.Digest, ref string) error {
	named, err := Normalize(ref)
	if err != nil {
		return err
	}
	if _, tagged := named.(reference.Tagged); tagged {
		if _, digested := named.(reference.Digested); digested {
			return fmt.Errorf("reference %q: a tag and a digest at once: %w", ref, errdefs.ErrInvalid)
		}
	}
	if _, err := t.record(id); err != nil {
		return err
	}
	b, err := t.tx.CreateBucketIfNotExists(bucketRefs)
	if err != nil {
		return err
	}
	return b.Put([]byte(named.String()), []byte(id))
}

// Untag removes the reference ref.
func (t Txn) Untag(ref string) error {
	named, err := Normalize(ref)
	if err != nil {
		return err
	}
	k := key(named)
	if t.target(k) == "" {
		return noSuchImage(ref)
	}
	return t.tx.Bucket(bucketRefs).Delete([]byte(k))
}

// Delete removes image id and every reference to it.
func (t Txn) Delete(id digest.Digest) error {
	if _, err := t.record(id); err != nil {
		return err
	}
	if refs := t.tx.Bucket(bucketRefs); refs != nil {
		var drop [][]byte
		err := refs.ForEach(func(k, v []byte) error {
			if digest.Digest(v) == id {
				drop = append(drop, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := refs.Delete(k); err != nil {
				return err
			}
		}
	}
	return t.tx.Bucket(bucketImages).Delete([]byte(id))
}

// SetParent records the local parent image of id ("" = none).
func (t Txn) SetParent(id, parent digest.Digest) error {
	r, err := t.record(id)
	if err != nil {
		return err
	}
	if parent != "" {
		if _, err := t.record(parent); err != nil {
			return fmt.Errorf("parent: %w", err)
		}
	}
	r.Parent = parent
	return t.put(id, r)
}

// Normalize parses ref as Docker does: busybox is
// docker.io/library/busybox:latest; a digest reference keeps its digest.
func Normalize(ref string) (reference.Named, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("reference %q: %v: %w", ref, err, errdefs.ErrInvalid)
	}
	return reference.TagNameOnly(named), nil
}

// key is the refs bucket key of named: its digest wins over its tag, as
// name:tag@digest means the image with that digest.
func key(named reference.Named) string {
	if d, ok := named.(reference.Digested); ok {
		if c, err := reference.WithDigest(reference.TrimNamed(named), d.Digest()); err == nil {
			return c.String()
		}
	}
	return named.String()
}

func noSuchImage(ref string) error {
	return fmt.Errorf("no such image: %s: %w", ref, errdefs.ErrNotFound)
}

// target returns the image ID reference key k points at, "" for none.
func (t Txn) target(k string) digest.Digest {
	if b := t.tx.Bucket(bucketRefs); b != nil {
		return digest.Digest(b.Get([]byte(k)))
	}
	return ""
}

// refsByImage returns the references of every image, sorted.
func (t Txn) refsByImage() (map[digest.Digest][]string, error) {
	refs := map[digest.Digest][]string{}
	b := t.tx.Bucket(bucketRefs)
	if b == nil {
		return refs, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		id := digest.Digest(v)
		refs[id] = append(refs[id], string(k))
		return nil
	})
	return refs, err
}

func (t Txn) record(id digest.Digest) (record, error) {
	var r record
	var v []byte
	if b := t.tx.Bucket(bucketImages); b != nil {
		v = b.Get([]byte(id))
	}
	if v == nil {
		return r, noSuchImage(id.String())
	}
	if err := json.Unmarshal(v, &r); err != nil {
		return r, fmt.Errorf("image %s: corrupt record: %w", id, err)
	}
	return r, nil
}

func (t Txn) put(id digest.Digest, r record) error {
	b, err := t.tx.CreateBucketIfNotExists(bucketImages)
	if err != nil {
		return err
	}
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.Put([]byte(id), v)
}

func (t Txn) forEach(fn func(digest.Digest, record) error) error {
	b := t.tx.Bucket(bucketImages)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		var r record
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("image %s: corrupt record: %w", k, err)
		}
		return fn(digest.Digest(k), r)
	})
}

// newImage assembles an Image from its record and references.
func newImage(id digest.Digest, r record, refs []string) (Image, error) {
	img := Image{ID: id, Config: r.Config, Parent: r.Parent, Loaded: r.Loaded}
	if err := json.Unmarshal(r.Config, &img.Spec); err != nil {
		return Image{}, fmt.Errorf("image %s: config: %w", id, err)
	}
	for _, ref := range refs {
		if strings.Contains(ref, "@") {
			img.RepoDigests = append(img.RepoDigests, ref)
		} else {
			img.RepoTags = append(img.RepoTags, ref)
		}
	}
	slices.Sort(img.RepoTags)
	slices.Sort(img.RepoDigests)
	return img, nil
}
