package driver

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/strata-storage/strata/errdefs"
	"golang.org/x/sys/unix"
)

// Mounts keeps, for every layer of a driver root, who holds its mount, so
// that all the processes using the root share one mount per layer and the
// last holder anywhere unmounts it. Everything is files and flocks:
//
//	.procs/<token>          one per live driver instance (process) that has
//	                        taken a Get, flocked exclusively for its life:
//	                        when the flock is free the process is gone
//	.mounts/<id>/           the holders of layer id; the directory is also
//	                        the layer's lock (flock), held while holders are
//	                        examined or changed and while mounting or
//	                        unmounting, and removed with its last holder
//	.mounts/<id>/proc-<token>
//	                        the process of .procs/<token> holds Get
//	                        references (their number is kept in its memory)
//	.mounts/<id>/pin-<random>
//	                        one Pin, whatever process made it; its content is
//	                        the boot id, since a reboot unmounts everything
//
// A holder whose process is gone, or a pin from an earlier boot, is dead:
// it is removed whenever its layer's holders are examined, so a crash with
// mounts held is recovered by the next user of the layer or, for mounts
// nobody uses again, by the next driver start that is alone (Recover).
type Mounts struct {
	dir    string // <root>/.mounts
	procs  string // <root>/.procs
	self   string // this process's holder name, proc-<token>
	bootID string

	// token is .procs/<token>, flocked exclusively until Close. It is made
	// at the first Get: most commands never mount, and a file created and
	// removed is a good part of what a `strata create` costs.
	tokenMu sync.Mutex
	token   *os.File
	closed  bool

	mu  sync.Mutex
	ids map[string]*ref
}

// ref is this process's state of one layer. Its mutex serializes the
// process's own calls on the layer; the flock serializes processes.
type ref struct {
	mu    sync.Mutex
	count int // Gets not yet Put; this process has a holder file iff > 0
	users int // goroutines holding or waiting for mu; the entry goes when 0
}

// holders are the live holders of a layer other than this process.
type holders struct {
	procs int      // other processes holding Get references
	pins  []string // pin holder names, sorted
}

const (
	procPrefix = "proc-"
	pinPrefix  = "pin-"
)

// OpenMounts registers this process as a user of the mounts of the driver
// root; Close unregisters it.
func OpenMounts(root string) (*Mounts, error) {
	m := &Mounts{dir: filepath.Join(root, ".mounts"), procs: filepath.Join(root, ".procs")}
	for _, dir := range []string{m.dir, m.procs} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return nil, err
	}
	m.bootID = strings.TrimSpace(string(boot))
	m.self = procPrefix + randomName()
	return m, nil
}

// register makes and locks this process's token, once.
func (m *Mounts) register() error {
	m.tokenMu.Lock()
	defer m.tokenMu.Unlock()
	if m.token != nil {
		return nil
	}
	p := filepath.Join(m.procs, strings.TrimPrefix(m.self, procPrefix))
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	// Nobody else knows the new token yet, so the lock is free.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		os.Remove(p)
		return fmt.Errorf("lock %s: %w", p, err)
	}
	m.token = f
	return nil
}

func randomName() string {
	b := make([]byte, 16)
	rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

// Acquire takes a Get reference on id for this process. mount runs first
// when no live holder has the layer mounted; it must replace whatever a
// crashed holder may have left mounted, and its failure takes nothing.
func (m *Mounts) Acquire(id string, mount func() error) error {
	e := m.ref(id)
	defer m.unref(id, e)
	if e.count > 0 { // our holder file is there and keeps the layer mounted
		e.count++
		return nil
	}
	if err := m.register(); err != nil {
		return err
	}
	return m.locked(id, func(h holders) error {
		if h.procs == 0 && len(h.pins) == 0 {
			if err := mount(); err != nil {
				return err
			}
		}
		if err := m.addHolder(id, m.self, nil); err != nil {
			return err
		}
		e.count = 1
		return nil
	})
}

// Release drops a Get reference of this process on id; unmount runs when it
// was the last reference of any holder. If unmount fails the reference
// stays, so that a later Release can try again.
func (m *Mounts) Release(id string, unmount func() error) error {
	e := m.ref(id)
	defer m.unref(id, e)
	switch e.count {
	case 0:
		return fmt.Errorf("put layer %s: not mounted by this process: %w", id, errdefs.ErrInvalid)
	case 1:
		return m.locked(id, func(h holders) error { return m.releaseLast(id, e, h, unmount) })
	}
	e.count--
	return nil
}

// releaseLast drops this process's holder of id, unmounting if it was the
// last live one.
func (m *Mounts) releaseLast(id string, e *ref, h holders, unmount func() error) error {
	if h.procs == 0 && len(h.pins) == 0 {
		if err := unmount(); err != nil {
			return err
		}
	}
	e.count = 0
	return m.removeHolder(id, m.self)
}

// Pin takes a reference on id that no process owns: it outlives this one
// and any process may drop it with Unpin. mount is as for Acquire.
func (m *Mounts) Pin(id string, mount func() error) error {
	e := m.ref(id)
	defer m.unref(id, e)
	return m.locked(id, func(h holders) error {
		if e.count == 0 && h.procs == 0 && len(h.pins) == 0 {
			if err := mount(); err != nil {
				return err
			}
		}
		return m.addHolder(id, pinPrefix+randomName(), []byte(m.bootID))
	})
}

// Unpin drops one pin of id; unmount runs when it was the last reference
// of any holder. It fails with errdefs.ErrInvalid when id has no pin.
func (m *Mounts) Unpin(id string, unmount func() error) error {
	e := m.ref(id)
	defer m.unref(id, e)
	return m.locked(id, func(h holders) error {
		if len(h.pins) == 0 {
			return fmt.Errorf("unpin layer %s: not pinned: %w", id, errdefs.ErrInvalid)
		}
		if e.count == 0 && h.procs == 0 && len(h.pins) == 1 {
			if err := unmount(); err != nil {
				return err
			}
		}
		return m.removeHolder(id, h.pins[0])
	})
}

// Count returns the live references on id: this process's Gets, one per
// other process holding any, one per pin.
func (m *Mounts) Count(id string) (int, error) {
	e := m.ref(id)
	defer m.unref(id, e)
	var n int
	err := m.locked(id, func(h holders) error {
		n = e.count + h.procs + len(h.pins)
		return nil
	})
	return n, err
}

// IfUnused runs fn while no process can take a reference on id, and only
// if id has no live holder; otherwise it fails with errdefs.ErrInUse.
func (m *Mounts) IfUnused(id string, fn func() error) error {
	e := m.ref(id)
	defer m.unref(id, e)
	return m.locked(id, func(h holders) error {
		if n := e.count + h.procs + len(h.pins); n > 0 {
			return fmt.Errorf("layer %s is mounted (%d references): %w", id, n, errdefs.ErrInUse)
		}
		return fn()
	})
}

// Close releases every Get reference this process holds, unmounting the
// layers nobody else holds (pins keep theirs mounted), and unregisters the
// process. Holders it fails to release die with the registration. Closing
// again does nothing.
func (m *Mounts) Close(unmount func(id string) error) error {
	m.tokenMu.Lock()
	defer m.tokenMu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	m.mu.Lock()
	ids := make([]string, 0, len(m.ids))
	for id := range m.ids {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	var errs []error
	for _, id := range ids {
		e := m.ref(id)
		if e.count > 0 {
			errs = append(errs, m.locked(id, func(h holders) error {
				return m.releaseLast(id, e, h, func() error { return unmount(id) })
			}))
		}
		m.unref(id, e)
	}
	if m.token != nil {
		errs = append(errs, os.Remove(m.token.Name()), m.token.Close())
		m.token = nil
	}
	return errors.Join(errs...)
}

// Recover drops every dead holder and process token under the root. Call it
// when no other process uses the root; then the layers still held are the
// pinned ones, and the caller unmounts every other mount it finds.
func (m *Mounts) Recover() error {
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return err
	}
	for _, ent := range entries {
		if !ent.IsDir() {
			continue
		}
		id := ent.Name()
		e := m.ref(id)
		err := m.locked(id, func(holders) error { return nil })
		m.unref(id, e)
		if err != nil {
			return err
		}
	}
	tokens, err := os.ReadDir(m.procs)
	if err != nil {
		return err
	}
	for _, t := range tokens {
		if procPrefix+t.Name() != m.self {
			m.alive(t.Name()) // removes it if dead
		}
	}
	return nil
}

// ref returns this process's entry of id, locked; unlock it with unref.
func (m *Mounts) ref(id string) *ref {
	m.mu.Lock()
	if m.ids == nil {
		m.ids = make(map[string]*ref)
	}
	e := m.ids[id]
	if e == nil {
		e = &ref{}
		m.ids[id] = e
	}
	e.users++
	m.mu.Unlock()
	e.mu.Lock()
	return e
}

func (m *Mounts) unref(id string, e *ref) {
	e.mu.Unlock()
	m.mu.Lock()
	e.users--
	if e.users == 0 && e.count == 0 {
		delete(m.ids, id)
	}
	m.mu.Unlock()
}

// locked runs fn with the flock of id held and id's live holders, dead ones
// removed; the holder directory goes afterwards if fn left it empty.
func (m *Mounts) locked(id string, fn func(holders) error) error {
	if err := ValidID(id); err != nil {
		return err
	}
	lock, err := m.lockLayer(id)
	if err != nil {
		return fmt.Errorf("lock mounts of layer %s: %w", id, err)
	}
	defer lock.Close()
	h, err := m.examine(id)
	if err == nil {
		err = fn(h)
	}
	// Fails while holders remain, which is fine. Removing the directory we
	// hold locked is safe: lockLayer checks what it locked is still there.
	os.Remove(lock.Name())
	return err
}

// lockLayer creates and flocks .mounts/<id>. A process that removed it
// while this one was waiting leaves us a lock on a deleted directory, so
// the lock is taken again until it is on the directory that is in place.
func (m *Mounts) lockLayer(id string) (*os.File, error) {
	dir := filepath.Join(m.dir, id)
	for {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		f, err := os.Open(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, err
		}
		var locked, now unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &locked); err != nil {
			f.Close()
			return nil, err
		}
		if unix.Stat(dir, &now) == nil && now.Dev == locked.Dev && now.Ino == locked.Ino {
			return f, nil
		}
		f.Close()
	}
}

// examine lists the live holders of id other than this process and removes
// the dead ones. Call it with the layer locked.
func (m *Mounts) examine(id string) (holders, error) {
	dir := filepath.Join(m.dir, id)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return holders{}, err
	}
	var h holders
	for _, ent := range entries {
		name := ent.Name()
		switch {
		case name == m.self:
			continue // counted in memory
		case strings.HasPrefix(name, procPrefix):
			if m.alive(strings.TrimPrefix(name, procPrefix)) {
				h.procs++
				continue
			}
		case strings.HasPrefix(name, pinPrefix):
			boot, err := os.ReadFile(filepath.Join(dir, name))
			if err == nil && string(boot) == m.bootID {
				h.pins = append(h.pins, name)
				continue
			}
		}
		if err := m.removeHolder(id, name); err != nil {
			return holders{}, err
		}
	}
	return h, nil
}

// alive reports whether the process of token still runs, and removes its
// token if not. Its owner holds the flock exclusively; a shared try
// succeeds only once the owner is gone and never blocks another examiner.
func (m *Mounts) alive(token string) bool {
	f, err := os.Open(filepath.Join(m.procs, token))
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		return true // unknown: never unmount under a process that may live
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB) != nil {
		return true
	}
	os.Remove(f.Name())
	return false
}

// addHolder creates the holder file name of id. Holder files need no
// fsync: a crash that loses them also loses the mounts they hold.
func (m *Mounts) addHolder(id, name string, content []byte) error {
	return os.WriteFile(filepath.Join(m.dir, id, name), content, 0o600)
}

func (m *Mounts) removeHolder(id, name string) error {
	err := os.Remove(filepath.Join(m.dir, id, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
