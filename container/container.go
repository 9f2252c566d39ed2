// Package container keeps container file systems: a container is an init
// layer on top of its image's top layer plus an empty read-write layer on
// top of that, as the seed describes; strata prepares, tracks, diffs and
// commits them, and runs no process.
//
// On disk, in the store's metadata.db (see package metadata):
//
//	containers/<id>         the container record (JSON)
//	names/<name>            the id a name points at
//	container-inits/<parent>  the init layer on driver layer <parent> and how
//	                        many containers use it (see inits.go)
//	container-trash/<seq>   driver layers of removed containers, not yet deleted
//
// next to it, in the store root:
//
//	containers/creating/<id>   flocked while a Create of id is under way; holds
//	                           the id of the init layer it makes, if it makes one
//	containers/init/<chain ID hex>.tar
//	                           the init layer tar of an image top layer (see initLayer)
//	containers/init/<parent>.lock
//	                           the lock of the init layer on driver layer <parent> (see inits.go)
//
// and in the graph driver: layer <id> for each container, on an init layer
// <parent>-init-<random> that all the containers of one image share.
package container

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/metadata"
)

// Container is one container's record.
type Container struct {
	ID       string        // 64 hex
	Name     string        // unique, without Docker's leading "/"
	Image    digest.Digest // image ID
	ImageRef string        // the reference it was created from, as given
	Top      digest.Digest // chain ID of the image's top layer ("" for an image without layers)
	TopCache string        // the driver id of that layer, the init layer's parent
	Init     string        // the driver id of its init layer, shared with the image's other containers
	Created  time.Time
	Config   json.RawMessage // the image config's "config", as Docker copies it
}

// InitID is the driver id of c's init layer; c.ID is its read-write layer's.
func (c Container) InitID() string { return c.Init }

// Store is the container store.
type Store struct {
	db         *metadata.DB
	driver     driver.Driver
	driverRoot string // synced once the layers of a container are made
	creating   string // directory of the flocked files of Creates under way
	initCache  string // directory of the init layer tars, by image top layer
}

var (
	bucketContainers = []byte("containers")
	bucketNames      = []byte("names")
)

// NewStore returns the container store of a strata root: db is the root's
// metadata.db, whose directory is the root.
func NewStore(db *metadata.DB, d driver.Driver) *Store {
	root := filepath.Dir(db.Path())
	return &Store{
		db:         db,
		driver:     d,
		driverRoot: filepath.Join(root, d.String()),
		creating:   filepath.Join(root, "containers", "creating"),
		initCache:  filepath.Join(root, "containers", "init"),
	}
}

// CreateOptions tune Create.
type CreateOptions struct {
	Name string // "" = a generated name, as Docker's adjective_surname
	// StorageOpt are driver options of the read-write layer, as docker
	// create --storage-opt (btrfs: size=10G).
	StorageOpt map[string]string
	// Config, when set, is the container's config in place of its image's
	// (store.CreateContainer; the daemon merges a request's over the image's).
	Config json.RawMessage
}

// Create makes the read-write layer on the init layer of the image's top
// layer c.TopCache (and that init layer, for the image's first container)
// and records the container. ErrExists when the name is taken, ErrInvalid
// when it breaks Docker's rules ([a-zA-Z0-9][a-zA-Z0-9_.-]+).
//
// The record is written only once the layers exist; until then a flocked
// file names the container, so that if this process dies the next Recover
// removes the layers it left.
func (s *Store) Create(c Container, opts CreateOptions) (Container, error) {
	name, err := checkName(opts.Name)
	if err != nil {
		return Container{}, err
	}
	if name != "" {
		if err := s.db.View(func(tx *bolt.Tx) error { return nameFree(tx, name) }); err != nil {
			return Container{}, err
		}
	}
	c.ID = newID()
	c.Name = name
	c.Created = time.Now().UTC()
	if c, err = s.create(c, opts.StorageOpt); err != nil {
		return Container{}, fmt.Errorf("create container: %w", err)
	}
	return c, nil
}

func (s *Store) create(c Container, storageOpt map[string]string) (Container, error) {
	op, err := s.beginCreate(c.ID)
	if err != nil {
		return Container{}, err
	}
	// The image's init layer stays while this create holds its lock, and
	// is made by one create at a time (see lockInit).
	var lock *os.File
	defer func() {
		if lock != nil {
			lock.Close()
		}
	}()
	lock, err = s.lockInit(c.TopCache, unix.LOCK_SH)
	if err == nil {
		c.Init, err = s.currentInit(c.TopCache)
	}
	if err == nil && c.Init == "" {
		// The shared lock is given up for the exclusive one, so another
		// create may have made the init layer meanwhile.
		lock.Close()
		if lock, err = s.lockInit(c.TopCache, unix.LOCK_EX); err == nil {
			c.Init, err = s.currentInit(c.TopCache)
		}
	}
	fresh := false
	if err == nil && c.Init == "" {
		fresh = true
		c.Init = newInitID(c.TopCache)
		err = op.note(c.Init)
	}
	if err == nil {
		err = s.createLayers(c, fresh, &driver.CreateOpts{StorageOpt: storageOpt})
	}
	// The layers are durable before the record names them.
	if err == nil && (fresh || !s.driver.Capabilities().DurableReadWrite) {
		err = driver.SyncFS(s.driverRoot)
	}
	if err == nil {
		err = s.db.Update(func(tx *bolt.Tx) error {
			if err := useInit(tx, c, fresh); err != nil {
				return err
			}
			return s.record(tx, &c)
		})
	}
	if err != nil {
		op.abort(s, c)
		return Container{}, err
	}
	op.done()
	return c, nil
}

// createLayers makes c's read-write layer and, when fresh, its init layer
// with its content first. What does not depend on each other runs at once:
// the init content (read from its cache, or found in the mounted image)
// while the init layer is made, and, where the driver's ApplyDiff never
// reads the parent (overlay), the read-write layer while the init content
// goes in. rw are the options of the read-write layer.
func (s *Store) createLayers(c Container, fresh bool, rw *driver.CreateOpts) error {
	if !fresh {
		return s.driver.CreateReadWrite(c.ID, c.InitID(), rw)
	}
	var tarball io.Reader
	var initErr error
	var wg sync.WaitGroup
	wg.Go(func() { tarball, initErr = s.initLayer(c) })
	err := s.driver.Create(c.InitID(), c.TopCache, nil)
	wg.Wait()
	if err = cmp.Or(err, initErr); err != nil {
		return err
	}
	apply := func() error {
		if _, err := s.driver.ApplyDiff(c.InitID(), c.TopCache, tarball); err != nil {
			return fmt.Errorf("init layer: %w", err)
		}
		return nil
	}
	if !s.driver.Capabilities().ParallelApply {
		if err := apply(); err != nil {
			return err
		}
		return s.driver.CreateReadWrite(c.ID, c.InitID(), rw)
	}
	wg.Go(func() { initErr = apply() })
	err = s.driver.CreateReadWrite(c.ID, c.InitID(), rw)
	wg.Wait()
	return cmp.Or(initErr, err)
}

// record writes c in tx once its image's top layer is checked to be still
// there: a concurrent rmi may have deleted it while the layers were made.
// An empty c.Name gets a generated one.
func (s *Store) record(tx *bolt.Tx, c *Container) error {
	if c.Top != "" {
		l, err := layer.Lookup(tx, c.Top)
		if errors.Is(err, errdefs.ErrNotFound) || (err == nil && l.CacheID != c.TopCache) {
			return fmt.Errorf("image %s was removed meanwhile: %w", c.Image.Encoded()[:12], errdefs.ErrNotFound)
		}
		if err != nil {
			return err
		}
	}
	if c.Name == "" {
		name, err := generateName(tx, c.ID)
		if err != nil {
			return err
		}
		c.Name = name
	} else if err := nameFree(tx, c.Name); err != nil {
		return err
	}
	if err := s.forgetRemoved(tx); err != nil {
		return err
	}
	v, err := json.Marshal(c)
	if err != nil {
		return err
	}
	containers, err := tx.CreateBucketIfNotExists(bucketContainers)
	if err != nil {
		return err
	}
	if containers.Get([]byte(c.ID)) != nil {
		return fmt.Errorf("container %s: %w", c.ID, errdefs.ErrExists)
	}
	names, err := tx.CreateBucketIfNotExists(bucketNames)
	if err != nil {
		return err
	}
	if err := names.Put([]byte(c.Name), []byte(c.ID)); err != nil {
		return err
	}
	return containers.Put([]byte(c.ID), v)
}

// Get finds a container by full ID, unique ID prefix or name.
func (s *Store) Get(ref string) (Container, error) {
	var c Container
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		c, err = Lookup(tx, ref)
		return err
	})
	return c, err
}

// Lookup finds a container in tx as Docker does: by full ID, then by name
// (with or without its leading "/"), then by unique ID prefix.
func Lookup(tx *bolt.Tx, ref string) (Container, error) {
	containers := tx.Bucket(bucketContainers)
	notFound := fmt.Errorf("No such container: %s: %w", ref, errdefs.ErrNotFound)
	if containers == nil || ref == "" {
		return Container{}, notFound
	}
	if v := containers.Get([]byte(ref)); v != nil {
		return decode(ref, v)
	}
	if names := tx.Bucket(bucketNames); names != nil {
		if id := names.Get([]byte(strings.TrimPrefix(ref, "/"))); id != nil {
			if v := containers.Get(id); v != nil {
				return decode(string(id), v)
			}
		}
	}
	cur := containers.Cursor()
	k, v := cur.Seek([]byte(ref))
	if k == nil || !strings.HasPrefix(string(k), ref) {
		return Container{}, notFound
	}
	if next, _ := cur.Next(); next != nil && strings.HasPrefix(string(next), ref) {
		return Container{}, fmt.Errorf("multiple IDs found with provided prefix: %s: %w", ref, errdefs.ErrInvalid)
	}
	return decode(string(k), v)
}

// List returns every container, newest first.
func (s *Store) List() ([]Container, error) {
	var cs []Container
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		cs, err = All(tx)
		return err
	})
	return cs, err
}

// All returns every container recorded in tx, newest first: the image
// store's removal checks and the layer store's GC roots read them in their
// own transactions.
func All(tx *bolt.Tx) ([]Container, error) {
	var cs []Container
	containers := tx.Bucket(bucketContainers)
	if containers == nil {
		return nil, nil
	}
	err := containers.ForEach(func(k, v []byte) error {
		c, err := decode(string(k), v)
		cs = append(cs, c)
		return err
	})
	slices.SortStableFunc(cs, func(a, b Container) int { return b.Created.Compare(a.Created) })
	return cs, err
}

// TopChains returns the chain IDs of the containers' image layers: with the
// images' own, they are the layer store's GC roots, so that a container
// keeps its layers after its image is removed with force.
func TopChains(tx *bolt.Tx) ([]digest.Digest, error) {
	cs, err := All(tx)
	var tops []digest.Digest
	for _, c := range cs {
		if c.Top != "" {
			tops = append(tops, c.Top)
		}
	}
	return tops, err
}

func decode(id string, v []byte) (Container, error) {
	var c Container
	if err := json.Unmarshal(v, &c); err != nil {
		return c, fmt.Errorf("container %s: corrupt record: %w", id, err)
	}
	return c, nil
}

// Mount pins the container's root file system mounted (it outlives the
// process) and returns its path; Unmount releases one pin.
func (s *Store) Mount(c Container) (string, error) {
	dir, err := s.driver.Pin(c.ID, "")
	if err != nil {
		return "", fmt.Errorf("mount container %s: %w", c.ID[:12], err)
	}
	return dir, nil
}

func (s *Store) Unmount(c Container) error {
	if err := s.driver.Unpin(c.ID); err != nil {
		return fmt.Errorf("unmount container %s: %w", c.ID[:12], err)
	}
	return nil
}

// Remove deletes the container and its layer, and the image's init layer
// with its last container; ErrInUse while mounted unless force, which
// releases its pins first. The record goes first, in one transaction that
// also queues the driver layers in the trash, so that a crash before they
// are removed leaves them to the next Recover. The layers are removed after
// that transaction, and none follows.
func (s *Store) Remove(c Container, force bool) error {
	n, err := s.driver.Mounted(c.ID)
	if err != nil {
		return fmt.Errorf("remove container %s: %w", c.ID[:12], err)
	}
	if n > 0 && !force {
		return fmt.Errorf("you cannot remove a mounted container %s: unmount it before removing it or force the removal (use -f): %w",
			c.ID[:12], errdefs.ErrInUse)
	}
	var ids []string // the driver layers that go: c's, and the init layer with the image's last container
	if n > 0 {
		for ; n > 0; n-- {
			if s.driver.Unpin(c.ID) != nil {
				break // what is left are other processes' Gets, not pins
			}
		}
		if n, err := s.driver.Mounted(c.ID); err != nil || n > 0 {
			return cmp.Or(err, fmt.Errorf("container %s is in use by another process: %w", c.ID[:12], errdefs.ErrInUse))
		}
	}
	lock, err := s.lockInit(c.TopCache, unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("remove container %s: %w", c.ID[:12], err)
	}
	defer lock.Close()
	err = s.db.Update(func(tx *bolt.Tx) error {
		containers := tx.Bucket(bucketContainers)
		if containers == nil || containers.Get([]byte(c.ID)) == nil {
			return fmt.Errorf("No such container: %s: %w", c.ID, errdefs.ErrNotFound)
		}
		if err := containers.Delete([]byte(c.ID)); err != nil {
			return err
		}
		if names := tx.Bucket(bucketNames); names != nil && string(names.Get([]byte(c.Name))) == c.ID {
			if err := names.Delete([]byte(c.Name)); err != nil {
				return err
			}
		}
		if err := s.forgetRemoved(tx); err != nil {
			return err
		}
		ids = []string{c.ID}
		if last, err := releaseInit(tx, c); err != nil {
			return err
		} else if last {
			ids = append(ids, c.InitID())
		}
		return addTrash(tx, ids...)
	})
	if err != nil {
		return err
	}
	// The trash entries stay until the next transaction that writes a
	// container record: forgetting them now would cost a second one.
	if err := removeLayers(s.driver, ids...); err != nil && !errors.Is(err, errdefs.ErrInUse) {
		return fmt.Errorf("remove container %s: %w", c.ID[:12], err)
	}
	return nil // a layer in use (a concurrent Get) goes at a later sweep
}

// SizeRw returns the bytes of content c's read-write layer holds: what
// Docker shows as its SizeRw, the init layer not counted.
func (s *Store) SizeRw(c Container) (int64, error) {
	return s.driver.DiffSize(c.ID, c.InitID())
}

// newID returns 32 random bytes in hex, as Docker's container IDs.
func newID() string {
	var b [32]byte
	rand.Read(b[:]) // never fails: it crashes the program instead
	return hex.EncodeToString(b[:])
}
