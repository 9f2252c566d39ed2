// Package container keeps container file systems: a container is an init
// layer on top of its image's top layer plus an empty read-write layer on
// top of that, as the seed describes; strata prepares, tracks, diffs and
// commits them, and runs no process. API STUB: filled in by the container work.
//
// On disk, in the store's metadata.db (see package metadata):
//
//	containers/<id>   the container record (JSON)
//	names/<name>      the id a name points at
//
// and in the graph driver: layers <id>-init and <id>.
package container

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/metadata"
)

var errTODO = errors.New("container: not implemented yet")

// Container is one container's record.
type Container struct {
	ID       string        // 64 hex
	Name     string        // unique, without Docker's leading "/"
	Image    digest.Digest // image ID
	ImageRef string        // the reference it was created from, as given
	Top      digest.Digest // chain ID of the image's top layer ("" for an image without layers)
	TopCache string        // the driver id of that layer, the init layer's parent
	Created  time.Time
	Config   json.RawMessage // the image config's "config", as Docker copies it
}

// InitID is the driver id of c's init layer; c.ID is its read-write layer's.
func (c Container) InitID() string { return c.ID + "-init" }

// Store is the container store.
type Store struct{}

// NewStore returns the container store of a strata root.
func NewStore(db *metadata.DB, d driver.Driver) *Store { return &Store{} }

// CreateOptions tune Create.
type CreateOptions struct {
	Name string // "" = a generated name, as Docker's adjective_surname
}

// Create makes the init and read-write layers on top of the layer topCache
// and records the container. ErrExists when the name is taken, ErrInvalid
// when it breaks Docker's rules ([a-zA-Z0-9][a-zA-Z0-9_.-]+).
func (s *Store) Create(c Container, opts CreateOptions) (Container, error) {
	return Container{}, errTODO
}

// Get finds a container by full ID, unique ID prefix or name.
func (s *Store) Get(ref string) (Container, error) { return Container{}, errTODO }

// List returns every container, newest first.
func (s *Store) List() ([]Container, error) { return nil, errTODO }

// Mount pins the container's root file system mounted (it outlives the
// process) and returns its path; Unmount releases one pin.
func (s *Store) Mount(c Container) (string, error) { return "", errTODO }
func (s *Store) Unmount(c Container) error         { return errTODO }

// Remove deletes the container and its layers; ErrInUse while mounted
// unless force, which releases its pins first.
func (s *Store) Remove(c Container, force bool) error { return errTODO }
