package container

import (
	"io"

	"github.com/strata-storage/strata/archive"
)

// API STUB: filled in by the diff/commit/export/cp work.

// Changes lists what the container changed (init layer files excluded).
func (s *Store) Changes(c Container) ([]archive.Change, error) { return nil, errTODO }

// Diff returns the layer tar of what the container changed.
func (s *Store) Diff(c Container) (io.ReadCloser, error) { return nil, errTODO }

// Export writes the container's flattened root file system as a tar.
func (s *Store) Export(c Container, w io.Writer) error { return errTODO }
