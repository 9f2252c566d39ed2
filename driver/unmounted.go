package driver

import (
	"fmt"

	"github.com/strata-storage/strata/errdefs"
)

// Unmounted is Get, Put, Pin, Unpin and Mounted for drivers whose layers
// are directories used in place (vfs, btrfs): nothing is mounted, but the
// references are counted as mounts are, so that Remove refuses a layer in
// use. A driver embeds it.
type Unmounted struct {
	mounts *Mounts
	dir    func(id string) string
	exists func(id string) bool
}

// NewUnmounted returns the reference counting of layers whose directory is
// dir(id), on m.
func NewUnmounted(m *Mounts, dir func(id string) string, exists func(id string) bool) Unmounted {
	return Unmounted{mounts: m, dir: dir, exists: exists}
}

// Get returns the layer's directory.
func (u Unmounted) Get(id, mountLabel string) (string, error) {
	if err := u.mounts.Acquire(id, u.present(id)); err != nil {
		return "", fmt.Errorf("get layer %s: %w", id, err)
	}
	return u.dir(id), nil
}

func (u Unmounted) Put(id string) error {
	return u.mounts.Release(id, func() error { return nil })
}

// Pin is Get with a reference that outlives this process.
func (u Unmounted) Pin(id, mountLabel string) (string, error) {
	if err := u.mounts.Pin(id, u.present(id)); err != nil {
		return "", fmt.Errorf("pin layer %s: %w", id, err)
	}
	return u.dir(id), nil
}

func (u Unmounted) Unpin(id string) error {
	return u.mounts.Unpin(id, func() error { return nil })
}

func (u Unmounted) Mounted(id string) (int, error) {
	if !u.exists(id) {
		return 0, fmt.Errorf("layer %s: %w", id, errdefs.ErrNotFound)
	}
	return u.mounts.Count(id)
}

// present is what stands for a mount: it runs under the layer's lock, so
// that a reference is never taken on a layer being removed.
func (u Unmounted) present(id string) func() error {
	return func() error {
		if !u.exists(id) {
			return errdefs.ErrNotFound
		}
		return nil
	}
}
