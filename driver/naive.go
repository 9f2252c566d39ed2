package driver

import (
	"errors"
	"io"
	"sync"
	"time"

	"github.com/strata-storage/strata/archive"
)

// NaiveDiff gives p the diff methods by mounting a layer and its parent and
// comparing the two trees with archive.Changes, which looks at nanosecond
// mtimes, sizes, modes and owners: a file changed within the same second as
// its parent's copy is still seen, so nothing here waits for the clock.
func NaiveDiff(p ProtoDriver) Driver {
	return &naiveDiff{ProtoDriver: p}
}

type naiveDiff struct {
	ProtoDriver
}

// CopyTimer is implemented by drivers whose layers start as copies of their
// parent (vfs). A copy has inodes of its own, so comparing the trees cannot
// tell a file rewritten with the same size and mtime from an untouched one;
// CopyTime(id) is when the copy was complete: a path whose ctime is not
// before it changed in the layer itself.
type CopyTimer interface {
	CopyTime(id string) (time.Time, error)
}

// changes compares the mounted layer id at dir with its parent at parentDir.
func (d *naiveDiff) changes(id, dir, parentDir string) ([]archive.Change, error) {
	var since time.Time
	if ct, ok := d.ProtoDriver.(CopyTimer); ok && parentDir != "" {
		var err error
		if since, err = ct.CopyTime(id); err != nil {
			return nil, err
		}
	}
	return archive.ChangesSince(parentDir, dir, since)
}

// mountPair gets id and parent ("" = none) and returns their paths and a
// func that puts both.
func (d *naiveDiff) mountPair(id, parent string) (dir, parentDir string, put func() error, err error) {
	dir, err = d.Get(id, "")
	if err != nil {
		return "", "", nil, err
	}
	if parent == "" {
		return dir, "", func() error { return d.Put(id) }, nil
	}
	parentDir, err = d.Get(parent, "")
	if err != nil {
		d.Put(id)
		return "", "", nil, err
	}
	put = func() error {
		return errors.Join(d.Put(parent), d.Put(id))
	}
	return dir, parentDir, put, nil
}

func (d *naiveDiff) Changes(id, parent string) ([]archive.Change, error) {
	dir, parentDir, put, err := d.mountPair(id, parent)
	if err != nil {
		return nil, err
	}
	changes, err := d.changes(id, dir, parentDir)
	return changes, errors.Join(err, put())
}

// Diff streams the layer tar through a pipe; both layers stay mounted until
// the returned reader is closed.
func (d *naiveDiff) Diff(id, parent string) (io.ReadCloser, error) {
	dir, parentDir, put, err := d.mountPair(id, parent)
	if err != nil {
		return nil, err
	}
	changes, err := d.changes(id, dir, parentDir)
	if err != nil {
		return nil, errors.Join(err, put())
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(archive.WriteChanges(pw, dir, changes))
	}()
	return &diffReader{PipeReader: pr, done: done, release: put}, nil
}

func (d *naiveDiff) ApplyDiff(id, parent string, diff io.Reader) (int64, error) {
	dir, err := d.Get(id, "")
	if err != nil {
		return 0, err
	}
	n, err := archive.Apply(dir, diff, archive.ApplyOptions{Whiteouts: archive.WhiteoutDelete})
	return n, errors.Join(err, d.Put(id))
}

func (d *naiveDiff) DiffSize(id, parent string) (int64, error) {
	dir, parentDir, put, err := d.mountPair(id, parent)
	if err != nil {
		return 0, err
	}
	changes, err := d.changes(id, dir, parentDir)
	if err != nil {
		return 0, errors.Join(err, put())
	}
	n, err := archive.ChangesSize(dir, changes)
	return n, errors.Join(err, put())
}

// diffReader releases the layers once the tar writer has stopped reading
// them, however early the reader is closed.
type diffReader struct {
	*io.PipeReader
	done    chan struct{}
	once    sync.Once
	release func() error
	err     error
}

func (r *diffReader) Close() error {
	r.once.Do(func() {
		r.PipeReader.Close()
		<-r.done
		r.err = r.release()
	})
	return r.err
}
