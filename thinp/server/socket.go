package server

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// withSocketPath calls fn with a path to the pool's control socket that
// fits in a socket address (108 bytes): the path itself, or for a deep pool
// directory the same file reached through /proc/self/fd.
func withSocketPath(dir string, fn func(path string) error) error {
	path := filepath.Join(dir, socketFile)
	if len(path) < 100 {
		return fn(path)
	}
	d, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), socketFile))
}
