// Package store is strata's library entry point: one root directory holding
// a graph driver's state, the layer store, the image store and the container
// store, opened together.
//
// On disk (mode 0711):
//
//	<root>/metadata.db   layers, leases, images, references, the driver's name
//	<root>/layerdb/      tar-split of each layer (package layer)
//	<root>/leases/       one flocked file per live lease (package layer)
//	<root>/containers/   flocked files of container creations under way (package container)
//	<root>/<driver>/     the graph driver's state
//
// Several strata processes may open one root at once: every metadata change
// is one bbolt transaction under the file's lock, and nothing stays locked
// between transactions.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/driver"
	// The drivers register themselves by name.
	_ "github.com/strata-storage/strata/driver/aufs"
	_ "github.com/strata-storage/strata/driver/btrfs"
	_ "github.com/strata-storage/strata/driver/devicemapper"
	_ "github.com/strata-storage/strata/driver/overlay"
	_ "github.com/strata-storage/strata/driver/vfs"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/metadata"
)

// Options select the root and the driver.
type Options struct {
	Root          string            // default DefaultRoot()
	Driver        string            // "" = the one the root was made with, else automatic choice
	DriverOptions map[string]string // --storage-opt key=value
}

// Store is an open strata root.
type Store struct {
	root   string
	db     *metadata.DB
	driver driver.Driver
	layers *layer.Store
	images *image.Store
	ctrs   *container.Store
}

// DefaultRoot is /var/lib/strata for root, else $XDG_DATA_HOME/strata
// (~/.local/share/strata when XDG_DATA_HOME is unset).
func DefaultRoot() string {
	if os.Geteuid() == 0 {
		return "/var/lib/strata"
	}
	if dir := os.Getenv("XDG_DATA_HOME"); dir != "" {
		return filepath.Join(dir, "strata")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "strata")
	}
	return filepath.Join(home, ".local", "share", "strata")
}

var (
	bucketMeta = []byte("meta")
	keyDriver  = []byte("driver")
)

// Open opens (creating if needed) the store at opts.Root, and cleans up what
// a crashed process left behind.
func Open(opts Options) (*Store, error) {
	root := opts.Root
	if root == "" {
		root = DefaultRoot()
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store root: %w", err)
	}
	if err := makeRoot(root); err != nil {
		return nil, err
	}
	db, err := metadata.Open(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, err
	}
	name, recorded, err := driverName(db, root, opts.Driver)
	if err != nil {
		return nil, err
	}
	d, err := driver.New(root, name, opts.DriverOptions)
	if err != nil {
		return nil, err
	}
	// What follows is a handful of quick transactions that usually write
	// nothing: one open of the file serves them all. Not from the start:
	// the driver's start may wait for another process, which must not wait
	// for the file meanwhile; what recover may remove, no one else uses.
	defer db.Hold()()
	s := &Store{root: root, db: db, driver: d, images: image.NewStore(db), ctrs: container.NewStore(db, d)}
	if recorded != d.String() {
		err = db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			return b.Put(keyDriver, []byte(d.String()))
		})
	}
	if err == nil {
		s.layers, err = layer.NewStore(root, db, d, gcRoots)
	}
	if err == nil {
		err = s.recover()
	}
	if err != nil {
		d.Cleanup()
		return nil, err
	}
	return s, nil
}

// recover removes what crashed processes left, as GC does, but without
// looking for unreachable layers unless a collection is due: it reads no
// image, and writes nothing when there is nothing to clean, since every
// command opens the store.
func (s *Store) recover() error {
	if err := s.ctrs.Recover(); err != nil {
		return err
	}
	return s.layers.Recover()
}

// makeRoot creates root with mode 0711: others may traverse it to reach
// mounted layers, not list it.
func makeRoot(root string) error {
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return fmt.Errorf("store root: %w", err)
	}
	err := os.Mkdir(root, 0o711)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err == nil {
		err = os.Chmod(root, 0o711) // not masked by the umask
	}
	if err != nil {
		return fmt.Errorf("store root: %w", err)
	}
	return nil
}

// driverName returns the driver to open: the one asked for, else the one
// the root was made with ("" for a new root: an automatic choice); and the
// one recorded ("" for none). Asking
// for another driver while images or containers are stored on the
// recorded one is refused: their layers would all be missing.
func driverName(db *metadata.DB, root, asked string) (name, recorded string, err error) {
	var images []image.Image
	var containers []container.Container
	err = db.View(func(tx *bolt.Tx) (err error) {
		if b := tx.Bucket(bucketMeta); b != nil {
			recorded = string(b.Get(keyDriver))
		}
		if asked == "" || recorded == "" || asked == recorded {
			return nil
		}
		if images, err = image.NewTxn(tx).List(); err != nil {
			return err
		}
		containers, err = container.All(tx)
		return err
	})
	if err != nil {
		return "", "", err
	}
	switch {
	case asked == "":
		return recorded, recorded, nil
	case recorded != "" && asked != recorded && len(images)+len(containers) > 0:
		return "", "", fmt.Errorf("store %s holds images on storage driver %s, not %s: open it with --storage-driver %s or use another --root: %w",
			root, recorded, asked, recorded, errdefs.ErrInvalid)
	}
	return asked, recorded, nil
}

// Close releases what the driver holds (mounts). The store holds no lock.
func (s *Store) Close() error { return s.driver.Cleanup() }

func (s *Store) Root() string          { return s.root }
func (s *Store) Driver() driver.Driver { return s.driver }
func (s *Store) Layers() *layer.Store  { return s.layers }
func (s *Store) Images() *image.Store  { return s.images }

func (s *Store) Containers() *container.Store { return s.ctrs }

// gcRoots are the layers that images and containers hold: a container keeps
// its image's layers even once the image is removed with force.
func gcRoots(tx *bolt.Tx) ([]digest.Digest, error) {
	roots, err := image.TopChains(tx)
	if err != nil {
		return nil, err
	}
	tops, err := container.TopChains(tx)
	return append(roots, tops...), err
}

// GC removes what crashed container creations and removals left, then the
// layers that no image, container or live lease holds, and what dead leases
// left behind. Containers go first: their init layers are children of image
// layers that may be unreachable otherwise.
func (s *Store) GC() error {
	if err := s.ctrs.Recover(); err != nil {
		return err
	}
	_, err := s.layers.GC()
	return err
}

// CreateContainer creates a container of the image imageRef names, with the
// image config's "config" as its own unless opts.Config is set, as docker
// create does.
func (s *Store) CreateContainer(imageRef string, opts container.CreateOptions) (container.Container, error) {
	img, err := s.images.Resolve(imageRef)
	if err != nil {
		return container.Container{}, err
	}
	var raw struct {
		Config json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(img.Config, &raw); err != nil {
		return container.Container{}, fmt.Errorf("image %s: config: %w", img.ID, err)
	}
	c := container.Container{Image: img.ID, ImageRef: imageRef, Config: raw.Config}
	if opts.Config != nil {
		c.Config = opts.Config
	}
	if diffIDs := img.DiffIDs(); len(diffIDs) > 0 {
		c.Top = layer.ChainID(diffIDs)
		top, err := s.layers.Get(c.Top)
		if err != nil {
			return container.Container{}, err
		}
		c.TopCache = top.CacheID
	}
	return s.ctrs.Create(c, opts)
}

// RemoveContainer removes c as Containers().Remove does and, when c's image
// is already gone (rmi -f), the layers only c held: the collection is
// marked due first, so that they go at the next open should this process
// die before collecting them.
func (s *Store) RemoveContainer(c container.Container, force bool) error {
	imageGone, err := s.imageGone(c.Image)
	if err == nil && imageGone {
		err = s.db.Update(layer.Due)
	}
	if err != nil {
		return err
	}
	if err := s.ctrs.Remove(c, force); err != nil {
		return err
	}
	if !imageGone { // an rmi -f may have run meanwhile
		if imageGone, err = s.imageGone(c.Image); err != nil || !imageGone {
			return err
		}
	}
	_, err = s.layers.GC()
	return err
}

func (s *Store) imageGone(id digest.Digest) (bool, error) {
	_, err := s.images.Get(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return true, nil
	}
	return false, err
}
