package archive

import (
	"archive/tar"
	"bytes"
	"fmt"
	"runtime"
	"sync"
)

// smallFile is the largest file handed to the file writers: its content is
// read into memory so that the tar reader can go on. Bigger files are written
// by the reader itself, and cost little per byte anyway.
const smallFile = 256 << 10

// fileWriters write the small files of one Apply on a few goroutines while
// the tar is read on one. Layers of many small files spend their time
// creating files in the kernel, and the kernel creates files in parallel.
// Each file is a path of its own (the applier refuses a path written twice),
// so the writers never touch the same file; what reads files the writers may
// still be writing (hard links) calls wait first.
type fileWriters struct {
	a       *applier
	jobs    chan fileJob
	pending sync.WaitGroup
	workers sync.WaitGroup

	mu  sync.Mutex
	err error
}

type fileJob struct {
	full string
	hdr  *tar.Header
	data []byte
}

func newFileWriters(a *applier) *fileWriters {
	w := &fileWriters{a: a, jobs: make(chan fileJob, 16)}
	n := min(runtime.NumCPU(), 4)
	for range n {
		w.workers.Add(1)
		go w.run()
	}
	return w
}

func (w *fileWriters) run() {
	defer w.workers.Done()
	for j := range w.jobs {
		if w.failed() == nil {
			if _, err := w.a.writeFile(j.full, j.hdr, bytes.NewReader(j.data), nil); err != nil {
				w.fail(fmt.Errorf("entry %q: %w", j.hdr.Name, err))
			}
		}
		w.pending.Done()
	}
}

// write queues a file; it returns the first error of an earlier file.
func (w *fileWriters) write(full string, hdr *tar.Header, data []byte) error {
	if err := w.failed(); err != nil {
		return err
	}
	w.pending.Add(1)
	w.jobs <- fileJob{full, hdr, data}
	return nil
}

// wait returns once every queued file is written, with the first error.
func (w *fileWriters) wait() error {
	w.pending.Wait()
	return w.failed()
}

// close stops the writers after the queued files.
func (w *fileWriters) close() error {
	close(w.jobs)
	w.workers.Wait()
	return w.failed()
}

func (w *fileWriters) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *fileWriters) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}
