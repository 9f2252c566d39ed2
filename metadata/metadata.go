// Package metadata keeps strata's metadata in one bbolt file shared by every
// strata process that opens the same root.
//
// On disk: <root>/metadata.db, a bbolt file whose top-level buckets belong
// to the packages that use them:
//
//	layers/<chainID>                 layer records (package layer)
//	leases/<id>/layers/<chainID>     layers a lease holds (package layer)
//	leases/<id>/pending/<cacheID>    driver layers a lease created, not yet recorded
//	trash/<seq>                      driver layers waiting for removal (package layer)
//	gc/due                           set while a layer collection is due (package layer)
//	images/<imageID>                 image records (package image)
//	refs/<reference>                 references to image IDs (package image)
//	meta/driver                      the storage driver the store was made with (package store)
//	containers/<id>                  container records (package container)
//	names/<name>                     container names to ids (package container)
//	container-trash/<seq>            driver layers of removed containers, to delete (package container)
//
// bbolt takes an exclusive flock on its file for as long as it is open, so a
// process must not keep it open: each transaction opens it and the last
// concurrent transaction of the process closes it, unless a Hold keeps it
// open a little longer. Goroutines of one process
// share the open instance, because a second open of the same file in one
// process would wait forever on the first one's lock.
package metadata

import (
	"fmt"
	"path/filepath"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// DB is a handle on a metadata file; it holds nothing open between
// transactions.
type DB struct {
	path string
}

// Open returns a handle on the bbolt file at path, creating the file if needed.
func Open(path string) (*DB, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("metadata %s: %w", path, err)
	}
	db := &DB{path: abs}
	// Open once so that a missing directory or a corrupt file is reported
	// now, not at the first transaction.
	if err := db.View(func(*bolt.Tx) error { return nil }); err != nil {
		return nil, err
	}
	return db, nil
}

// Path returns the file's absolute path.
func (db *DB) Path() string { return db.path }

// Update runs fn in a read-write transaction: everything fn writes is
// committed together if fn returns nil, and nothing is if it fails.
func (db *DB) Update(fn func(*bolt.Tx) error) error {
	b, err := acquire(db.path)
	if err != nil {
		return err
	}
	defer release(db.path)
	return b.Update(fn)
}

// View runs fn in a read-only transaction.
func (db *DB) View(fn func(*bolt.Tx) error) error {
	b, err := acquire(db.path)
	if err != nil {
		return err
	}
	defer release(db.path)
	return b.View(fn)
}

// Hold keeps the file open, once a transaction has opened it, until done
// is called: a burst of short transactions (the checks of store.Open) then
// opens and maps it once instead of once each. Other processes wait for
// done, so hold only around work that is quick and never waits for
// another process.
func (db *DB) Hold() (done func()) {
	handlesMu.Lock()
	h := handles[db.path]
	if h == nil {
		h = &handle{}
		handles[db.path] = h
	}
	h.users++
	handlesMu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { release(db.path) }) }
}

// handle is the process's open instance of one file and the number of
// transactions using it.
type handle struct {
	users int
	open  sync.Mutex // serialises the first open, which may wait on another process
	db    *bolt.DB
}

var (
	handlesMu sync.Mutex
	handles   = map[string]*handle{}
)

func acquire(path string) (*bolt.DB, error) {
	handlesMu.Lock()
	h := handles[path]
	if h == nil {
		h = &handle{}
		handles[path] = h
	}
	h.users++
	handlesMu.Unlock()

	h.open.Lock()
	defer h.open.Unlock()
	if h.db == nil {
		// Timeout 0 waits for as long as another process holds the file.
		b, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 0})
		if err != nil {
			release(path)
			return nil, fmt.Errorf("metadata %s: %w", path, err)
		}
		h.db = b
	}
	return h.db, nil
}

func release(path string) {
	handlesMu.Lock()
	defer handlesMu.Unlock()
	h := handles[path]
	h.users--
	if h.users > 0 {
		return
	}
	delete(handles, path)
	if h.db != nil {
		// Every transaction has ended: Close only unmaps and unlocks, and
		// committed data is already on disk, so its error changes nothing.
		_ = h.db.Close()
	}
}
