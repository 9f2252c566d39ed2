package layer

import (
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// syncFS makes everything written to the file systems holding paths
// durable, one syncfs per file system: cheaper than an fsync per file of a
// layer, and it covers the directories too.
func syncFS(paths ...string) error {
	seen := map[uint64]bool{}
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return fmt.Errorf("sync %s: %w", p, err)
		}
		if seen[st.Dev] {
			continue
		}
		seen[st.Dev] = true
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("sync %s: %w", p, err)
		}
		err = unix.Syncfs(int(f.Fd()))
		f.Close()
		if err != nil {
			return fmt.Errorf("sync %s: %w", p, err)
		}
	}
	return nil
}

// syncDir makes the entries of dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// flusher starts the writeback of a file system early, while other layers
// are still being applied, so that the one syncfs that makes a registration
// durable has little left to wait for. One early flush runs at a time; its
// errors are left to that final syncfs.
type flusher struct{ running atomic.Bool }

func (f *flusher) start(path string) {
	if f.running.CompareAndSwap(false, true) {
		go func() {
			defer f.running.Store(false)
			syncFS(path)
		}()
	}
}
