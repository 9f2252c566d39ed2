package driver

import (
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
