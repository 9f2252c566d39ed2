package container

import (
	"errors"
	"fmt"
	"io"

	"github.com/strata-storage/strata/archive"
)

// Changes lists what the container changed, sorted by path, as docker diff
// does. The read-write layer is compared with the init layer, not with the
// image, so the files the init layer adds are never reported; overlay reads
// only its upper directory, other drivers compare the two trees.
func (s *Store) Changes(c Container) ([]archive.Change, error) {
	changes, err := s.driver.Changes(c.ID, c.InitID())
	if err != nil {
		return nil, fmt.Errorf("changes of container %s: %w", c.Name, err)
	}
	return changes, nil
}

// Diff returns the layer tar of what the container changed: the layer a
// commit registers on top of the image. The caller closes it.
func (s *Store) Diff(c Container) (io.ReadCloser, error) {
	rc, err := s.driver.Diff(c.ID, c.InitID())
	if err != nil {
		return nil, fmt.Errorf("diff of container %s: %w", c.Name, err)
	}
	return rc, nil
}

// Export writes the container's flattened root file system to w as a tar,
// as docker export does: names relative, each directory before its
// content, hard links as links. The mounted root is a merged view, so it
// holds no whiteouts to translate.
func (s *Store) Export(c Container, w io.Writer) (err error) {
	root, err := s.driver.Get(c.ID, "")
	if err != nil {
		return fmt.Errorf("export container %s: %w", c.Name, err)
	}
	defer func() { err = errors.Join(err, s.driver.Put(c.ID)) }()
	if err := archive.WriteDir(w, root, archive.WriteOptions{}); err != nil {
		return fmt.Errorf("export container %s: %w", c.Name, err)
	}
	return nil
}
