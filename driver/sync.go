package driver

import (
	"os"

	"golang.org/x/sys/unix"
)

// SyncFS flushes the whole file system holding path: one syncfs makes a new
// layer's files and directories durable at once, where an fsync of each
// would cost a journal commit apiece. It waits for every writer of the file
// system, though: Fsync suits a layer of a few entries better.
func SyncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// Fsync makes the named files and directories durable, each with its own
// fsync, in order: list a directory after the entries made in it. The
// writeback of every file starts first, so that on a journaling file system
// the first fsync's commit carries all of their data and most of the later
// fsyncs find nothing left to write.
func Fsync(paths ...string) error {
	files := make([]*os.File, 0, len(paths))
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		files = append(files, f)
		// Only a hint: an error here shows again at the fsync.
		unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	for _, f := range files {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	return nil
}
