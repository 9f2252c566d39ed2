package store

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/layer"
)

// CreateImage records the image of config and points refs at it, in one
// transaction, once the config's layers are registered (the loaders call it
// while their lease still holds them).
func (s *Store) CreateImage(config []byte, refs ...string) (image.Image, error) {
	return s.createImage(config, "", refs)
}

// createImage creates the image of config, with parent as its local parent
// when not "", and tags it with refs, in one transaction.
func (s *Store) createImage(config []byte, parent digest.Digest, refs []string) (image.Image, error) {
	var img image.Image
	err := s.db.Update(func(tx *bolt.Tx) error {
		t := image.NewTxn(tx)
		var err error
		if img, err = t.Create(config); err != nil {
			return err
		}
		if diffIDs := img.DiffIDs(); len(diffIDs) > 0 {
			top := layer.ChainID(diffIDs)
			if _, err := layer.Lookup(tx, top); errors.Is(err, errdefs.ErrNotFound) {
				return fmt.Errorf("image %s: top layer %s is not registered: %w", img.ID, top, errdefs.ErrInvalid)
			} else if err != nil {
				return err
			}
		}
		if parent != "" {
			if err := t.SetParent(img.ID, parent); err != nil {
				return err
			}
		}
		for _, ref := range refs {
			if err := t.Tag(img.ID, ref); err != nil {
				return err
			}
		}
		img, err = t.Get(img.ID)
		return err
	})
	return img, err
}

// Removed is one line of rmi's output.
type Removed struct {
	Untagged string // a reference removed
	Deleted  string // an image ID or layer chain ID deleted
}

// RemoveImageOptions are docker rmi's flags.
type RemoveImageOptions struct {
	// Force removes an image by ID even with several references, or used
	// by a container, whose layers then stay while it lives.
	Force bool
	// NoPrune keeps the parent images left without references, children
	// and containers, which are otherwise removed with their child.
	NoPrune bool
}

// RemoveImage removes a reference, or an image by ID, as docker rmi does:
// it untags; the image goes when no reference is left. An image with child
// images is never deleted. An image a container uses is neither deleted nor
// left without references unless forced. Its local parents that nothing
// else holds go with it, unless NoPrune. The result lists the references
// untagged, then each image deleted followed by the layers only it held,
// children first.
func (s *Store) RemoveImage(ref string, opts RemoveImageOptions) ([]Removed, error) {
	force := opts.Force
	var out []Removed
	err := s.db.Update(func(tx *bolt.Tx) error {
		out = nil
		t := image.NewTxn(tx)
		img, err := t.Resolve(ref)
		if err != nil {
			return err
		}
		untag := func(r string) error {
			out = append(out, Removed{Untagged: r})
			return t.Untag(r)
		}
		refs := append(slices.Clone(img.RepoTags), img.RepoDigests...)
		slices.Sort(refs)
		children, err := t.Children(img.ID)
		if err != nil {
			return err
		}
		user, err := containerUsing(tx, img.ID)
		if err != nil {
			return err
		}

		if !isIDPrefix(img.ID, ref) {
			left, err := untagReference(ref, refs, untag)
			if err != nil || left > 0 {
				return err
			}
			if user != "" && !force {
				return fmt.Errorf("conflict: unable to remove repository reference %q (must force) - container %s is using its referenced image %s: %w",
					ref, user[:12], img.ID.Encoded()[:12], errdefs.ErrInUse)
			}
			if len(children) > 0 {
				return nil
			}
		} else {
			short := img.ID.Encoded()[:12]
			repos, err := repositories(refs)
			if err != nil {
				return err
			}
			if len(repos) > 1 && !force {
				return fmt.Errorf("conflict: unable to delete %s (must be forced) - image is referenced in multiple repositories: %w", short, errdefs.ErrInUse)
			}
			if len(children) > 0 {
				return fmt.Errorf("conflict: unable to delete %s - image has dependent child images: %w", short, errdefs.ErrInUse)
			}
			if user != "" && !force {
				return fmt.Errorf("conflict: unable to delete %s (must be forced) - image is being used by stopped container %s: %w", short, user[:12], errdefs.ErrInUse)
			}
			for _, r := range refs {
				if err := untag(r); err != nil {
					return err
				}
			}
		}

		for {
			if err := t.Delete(img.ID); err != nil {
				return err
			}
			out = append(out, Removed{Deleted: img.ID.String()})
			deleted, err := s.layers.Collect(tx)
			for _, c := range deleted {
				out = append(out, Removed{Deleted: c.String()})
			}
			if err != nil || opts.NoPrune {
				return err
			}
			if img, err = prunable(tx, t, img.Parent); err != nil || img.ID == "" {
				return err
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return out, s.layers.Sweep()
}

// prunable returns the image parent when removing its last child leaves it
// unused, as docker rmi prunes it: no references, no other children, no
// container. Otherwise, or for no parent, an image with no ID.
func prunable(tx *bolt.Tx, t image.Txn, parent digest.Digest) (image.Image, error) {
	if parent == "" {
		return image.Image{}, nil
	}
	img, err := t.Get(parent)
	if errors.Is(err, errdefs.ErrNotFound) || err == nil && len(img.RepoTags)+len(img.RepoDigests) > 0 {
		return image.Image{}, nil
	}
	if err != nil {
		return image.Image{}, err
	}
	children, err := t.Children(parent)
	if err != nil || len(children) > 0 {
		return image.Image{}, err
	}
	user, err := containerUsing(tx, parent)
	if err != nil || user != "" {
		return image.Image{}, err
	}
	return img, nil
}

// containerUsing returns the ID of the newest container of image id, "" when
// none uses it.
func containerUsing(tx *bolt.Tx, id digest.Digest) (string, error) {
	cs, err := container.All(tx)
	for _, c := range cs {
		if c.Image == id {
			return c.ID, err
		}
	}
	return "", err
}

// untagReference untags ref from an image with references refs and returns
// how many are left. When ref was the last tag of its repository, the
// repository's digest references go too, as they would otherwise keep an
// image nobody can name by tag.
func untagReference(ref string, refs []string, untag func(string) error) (left int, err error) {
	named, err := image.Normalize(ref)
	if err != nil {
		return 0, err
	}
	if err := untag(named.String()); err != nil {
		return 0, err
	}
	var rest []reference.Named
	for _, r := range refs {
		if r == named.String() {
			continue
		}
		n, err := reference.ParseNormalizedNamed(r)
		if err != nil {
			return 0, err
		}
		rest = append(rest, n)
	}
	if _, digested := named.(reference.Digested); digested {
		return len(rest), nil
	}
	sameRepo := func(n reference.Named) bool { return n.Name() == named.Name() }
	for _, n := range rest {
		if _, digested := n.(reference.Digested); !digested && sameRepo(n) {
			return len(rest), nil
		}
	}
	left = len(rest)
	for _, n := range rest {
		if sameRepo(n) {
			if err := untag(n.String()); err != nil {
				return 0, err
			}
			left--
		}
	}
	return left, nil
}

// isIDPrefix reports whether ref names id by (a prefix of) its ID rather
// than by a reference.
func isIDPrefix(id digest.Digest, ref string) bool {
	return strings.HasPrefix(id.String(), ref) || strings.HasPrefix(id.Encoded(), ref)
}

// repositories returns the distinct repository names among refs.
func repositories(refs []string) ([]string, error) {
	var repos []string
	for _, r := range refs {
		n, err := reference.ParseNormalizedNamed(r)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(repos, n.Name()) {
			repos = append(repos, n.Name())
		}
	}
	return repos, nil
}
