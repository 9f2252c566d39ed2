package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// RootLock is a driver root's lock file, <root>/.lock. Every process that
// has the driver open holds it shared. A driver removes what crashed
// processes left behind (staging dirs, stale mounts) only when it can first
// take it exclusively: then no other process is using the root, and nothing
// it finds there can be another process's work in progress.
type RootLock struct{ f *os.File }

// LockRoot takes the lock of root, exclusively when no other process holds
// it (alone is then true, and the caller must call Share once it has cleaned
// up), else shared.
func LockRoot(root string) (l *RootLock, alone bool, err error) {
	f, err := os.OpenFile(filepath.Join(root, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		return &RootLock{f}, true, nil
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("lock %s: %w", root, err)
	}
	return &RootLock{f}, false, nil
}

// Share turns an exclusive lock into a shared one, letting other processes in.
func (l *RootLock) Share() error {
	return unix.Flock(int(l.f.Fd()), unix.LOCK_SH)
}

// Close releases the lock; closing it again does nothing.
func (l *RootLock) Close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// OpenRoot is how a driver starts on its root: it takes the root's lock and
// registers this process's mounts. When no other process uses the root, it
// first recovers what crashed ones left: dead mount holders, then what
// cleanup removes (the driver's staging dirs, stale mounts: it gets the
// recovered mounts to tell which are held); only then does it let other
// processes in. Release both with Root.Close.
func OpenRoot(root string, cleanup func(*Mounts) error) (*Root, error) {
	lock, alone, err := LockRoot(root)
	if err != nil {
		return nil, err
	}
	mounts, err := OpenMounts(root)
	if err != nil {
		lock.Close()
		return nil, err
	}
	r := &Root{lock: lock, Mounts: mounts}
	if alone {
		err = mounts.Recover()
		if err == nil && cleanup != nil {
			err = cleanup(mounts)
		}
		if err == nil {
			err = lock.Share()
		}
		if err != nil {
			r.Close(func(string) error { return nil }) // nothing is held yet
			return nil, err
		}
	}
	return r, nil
}

// Root is a driver's hold on its root, shared with the other processes
// using it.
type Root struct {
	lock   *RootLock
	Mounts *Mounts
}

// Close releases this process's mounts (unmount is called for each layer
// it held; pins stay) and the root's lock.
func (r *Root) Close(unmount func(id string) error) error {
	return errors.Join(r.Mounts.Close(unmount), r.lock.Close())
}
