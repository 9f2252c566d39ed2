package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
)

// LockRoot makes this process the one daemon serving root: it flocks
// <root>/daemon.lock and writes its pid there, for the message a second
// daemon prints. The CLI takes no such lock: it shares the store with the
// daemon. The lock goes with the returned release, or with the process.
func LockRoot(root string) (release func() error, err error) {
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, fmt.Errorf("daemon lock: %w", err)
	}
	path := filepath.Join(root, "daemon.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemon lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another strata daemon is using %s (pid %s): %w", root, lockHolder(path), errdefs.ErrInUse)
		}
		return nil, fmt.Errorf("daemon lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("daemon lock %s: %w", path, err)
	}
	return f.Close, nil // closing the file drops the flock
}

// lockHolder returns the pid the lock file names, "unknown" if it names none
// yet (the holder is starting).
func lockHolder(path string) string {
	b, err := os.ReadFile(path)
	if pid := strings.TrimSpace(string(b)); err == nil && pid != "" {
		return pid
	}
	return "unknown"
}
