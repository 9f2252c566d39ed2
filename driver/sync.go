package driver

import (
	"os"

	"golang.org/x/sys/unix"
)

// SyncFS flushes the whole file system holding path: one syncfs makes a new
// layer's files and directories durable at once, where an fsync of each
// would cost a flush of the disk's cache apiece. It also waits for the other
// writers of the file system.
func SyncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
