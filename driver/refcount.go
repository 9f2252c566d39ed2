package driver

import (
	"errors"
	"fmt"
	"sync"

	"github.com/strata-storage/strata/errdefs"
)

// RefCounter counts the Gets of each layer inside this process and
// serializes the mount and unmount of one layer, so that two Gets make one
// mount and the last Put unmounts. Different layers never wait on each other.
type RefCounter struct {
	mu  sync.Mutex
	ids map[string]*ref
}

type ref struct {
	mu    sync.Mutex
	count int // Gets not yet Put
	users int // goroutines holding or waiting for mu; the entry goes when 0
}

// lock returns id's entry locked; unlock it with r.unlock(id, e).
func (r *RefCounter) lock(id string) *ref {
	r.mu.Lock()
	if r.ids == nil {
		r.ids = make(map[string]*ref)
	}
	e := r.ids[id]
	if e == nil {
		e = &ref{}
		r.ids[id] = e
	}
	e.users++
	r.mu.Unlock()
	e.mu.Lock()
	return e
}

func (r *RefCounter) unlock(id string, e *ref) {
	e.mu.Unlock()
	r.mu.Lock()
	e.users--
	if e.users == 0 && e.count == 0 {
		delete(r.ids, id)
	}
	r.mu.Unlock()
}

// Acquire takes a reference on id; mount runs first when it is the first one
// and its failure takes no reference.
func (r *RefCounter) Acquire(id string, mount func() error) error {
	e := r.lock(id)
	defer r.unlock(id, e)
	if e.count == 0 {
		if err := mount(); err != nil {
			return err
		}
	}
	e.count++
	return nil
}

// Release drops a reference on id; unmount runs when it is the last one, and
// if it fails the reference stays so that a later Put can try again.
func (r *RefCounter) Release(id string, unmount func() error) error {
	e := r.lock(id)
	defer r.unlock(id, e)
	if e.count == 0 {
		return fmt.Errorf("put layer %s: not mounted: %w", id, errdefs.ErrInvalid)
	}
	if e.count == 1 {
		if err := unmount(); err != nil {
			return err
		}
	}
	e.count--
	return nil
}

// IfUnused runs fn while no Get of id can start, and only if id holds no
// reference; otherwise it fails with errdefs.ErrInUse.
func (r *RefCounter) IfUnused(id string, fn func() error) error {
	e := r.lock(id)
	defer r.unlock(id, e)
	if e.count > 0 {
		return fmt.Errorf("layer %s is mounted: %w", id, errdefs.ErrInUse)
	}
	return fn()
}

// ReleaseAll drops every reference this process holds, running unmount once
// for each layer that held any, for Cleanup.
func (r *RefCounter) ReleaseAll(unmount func(id string) error) error {
	r.mu.Lock()
	ids := make([]string, 0, len(r.ids))
	for id := range r.ids {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	var errs []error
	for _, id := range ids {
		e := r.lock(id)
		if e.count > 0 {
			if err := unmount(id); err != nil {
				errs = append(errs, err)
			} else {
				e.count = 0
			}
		}
		r.unlock(id, e)
	}
	return errors.Join(errs...)
}
