// Package store is strata's library entry point: one root directory holding
// a graph driver's state, the layer store and the image store, opened
// together.
//
// On disk (mode 0711):
//
//	<root>/metadata.db   layers, leases, images, references, the driver's name
//	<root>/layerdb/      tar-split of each layer (package layer)
//	<root>/leases/       one flocked file per live lease (package layer)
//	<root>/<driver>/     the graph driver's state
//
// Several strata processes may open one root at once: every metadata change
// is one bbolt transaction under the file's lock, and nothing stays locked
// between transactions.
package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/driver"
	_ "github.com/strata-storage/strata/driver/overlay" // registers "overlay"
	_ "github.com/strata-storage/strata/driver/vfs"     // registers "vfs"
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
	name, err := driverName(db, root, opts.Driver)
	if err != nil {
		return nil, err
	}
	d, err := driver.New(root, name, opts.DriverOptions)
	if err != nil {
		return nil, err
	}
	s := &Store{root: root, db: db, driver: d, images: image.NewStore(db)}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		return b.Put(keyDriver, []byte(d.String()))
	})
	if err == nil {
		s.layers, err = layer.NewStore(root, db, d, image.TopChains)
	}
	if err == nil {
		err = s.GC()
	}
	if err != nil {
		d.Cleanup()
		return nil, err
	}
	return s, nil
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
// the root was made with. Asking for another driver while images are
// stored on the recorded one is refused: their layers would all be missing.
func driverName(db *metadata.DB, root, asked string) (string, error) {
	var recorded string
	var images []image.Image
	err := db.View(func(tx *bolt.Tx) (err error) {
		if b := tx.Bucket(bucketMeta); b != nil {
			recorded = string(b.Get(keyDriver))
		}
		images, err = image.NewTxn(tx).List()
		return err
	})
	if err != nil {
		return "", err
	}
	switch {
	case asked == "":
		return recorded, nil
	case recorded != "" && asked != recorded && len(images) > 0:
		return "", fmt.Errorf("store %s holds images on storage driver %s, not %s: open it with --storage-driver %s or use another --root: %w",
			root, recorded, asked, recorded, errdefs.ErrInvalid)
	}
	return asked, nil
}

// Close releases what the driver holds (mounts). The store holds no lock.
func (s *Store) Close() error { return s.driver.Cleanup() }

func (s *Store) Root() string          { return s.root }
func (s *Store) Driver() driver.Driver { return s.driver }
func (s *Store) Layers() *layer.Store  { return s.layers }
func (s *Store) Images() *image.Store  { return s.images }

// GC removes layers that no image and no live lease holds, and what dead
// leases left behind.
func (s *Store) GC() error {
	_, err := s.layers.GC()
	return err
}
