package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/thinp"
)

// Without a server, requests that need no device are done in the client's
// process, and start no server; with one, they go to it.
func TestInProcess(t *testing.T) {
	f := newFixture(t, thinp.Options{DataSize: 1 << 30})
	if err := f.c.CreateThin(1, 64<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.c.CreateSnapTx(2, 1, 0, 7); err != nil {
		t.Fatal(err)
	}
	if err := f.c.CreateSnapTx(3, 1, 6, 8); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("snapshot with a wrong transaction id: %v, want ErrInvalid", err)
	}
	if err := f.c.Deactivate(1); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("deactivate of an inactive device: %v, want ErrNotFound", err)
	}
	if err := f.c.Delete(3); err != nil { // made, though its transaction id was wrong
		t.Fatal(err)
	}
	if err := f.c.Grow(2<<30, 0); err != nil {
		t.Fatal(err)
	}
	st := f.status()
	if st.Pid != 0 || f.c.Running() {
		t.Fatalf("a server runs (pid %d) after requests that need none", st.Pid)
	}
	if _, err := os.Stat(filepath.Join(f.dir, socketFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("control socket: %v, want none", err)
	}
	if st.TransactionID != 7 || st.TotalData*uint64(st.BlockSize) != 2<<30 || !hasDevices(st, 1, 2) {
		t.Fatalf("status %+v: want transaction 7, 2 GiB, devices 1 and 2", st.Status)
	}

	// A running server sees what was done without it, and does what is
	// asked while it runs.
	dev := f.activate(2, true)
	if err := f.c.CreateSnap(3, 2); err != nil {
		t.Fatal(err)
	}
	st = f.status()
	if st.Pid == 0 || st.Active[2] != dev || !hasDevices(st, 1, 2, 3) || mapped(st, 3) == 0 {
		t.Fatalf("status through the server: pid %d, active %v, %+v", st.Pid, st.Active, st.Devices)
	}
	if err := f.c.Deactivate(2); err != nil {
		t.Fatal(err)
	}
	f.waitStopped()
	if err := f.c.Delete(1); err != nil {
		t.Fatal(err)
	}
	if st = f.status(); st.Pid != 0 || !hasDevices(st, 2, 3) {
		t.Fatalf("status after the server exited: pid %d, %+v", st.Pid, st.Devices)
	}
	f.check()
}

// While another process holds the pool's lock (a server starting or
// closing, or a client doing a request), requests wait for it: none opens
// the pool a second time, and a server starts once the lock is free.
func TestInProcessWaitsForLock(t *testing.T) {
	f := newFixture(t, thinp.Options{DataSize: 1 << 30})
	if err := f.c.CreateThin(1, 64<<20); err != nil {
		t.Fatal(err)
	}
	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"snapshot", func() error { return f.c.CreateSnap(2, 1) }},
		{"activate", func() error { _, err := f.c.Activate(1); return err }},
	} {
		lock, err := os.OpenFile(filepath.Join(f.dir, lockFile), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- op.do() }()
		select {
		case err := <-done:
			lock.Close()
			t.Fatalf("%s done while another process held the pool: %v", op.name, err)
		case <-time.After(200 * time.Millisecond):
		}
		lock.Close()
		if err := <-done; err != nil {
			t.Fatalf("%s after the lock was released: %v", op.name, err)
		}
	}
	if st := f.status(); st.Pid == 0 || st.Active[1] == "" || !hasDevices(st, 1, 2) {
		t.Fatalf("status: pid %d, active %v, %+v", st.Pid, st.Active, st.Devices)
	}
	if err := f.c.Deactivate(1); err != nil {
		t.Fatal(err)
	}
	f.check()
}

// Clients doing snapshots and deletes race a server that starts and exits
// again and again: every change lands exactly once.
func TestInProcessRace(t *testing.T) {
	f := newFixture(t, thinp.Options{DataSize: 1 << 30})
	if err := f.c.CreateThin(0, 64<<20); err != nil {
		t.Fatal(err)
	}
	f.activate(0, true)
	if err := f.c.Deactivate(0); err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, 3*n)
	wg.Go(func() { // a server comes and goes
		for range n / 2 {
			if _, err := f.c.Activate(0); err != nil {
				errs <- fmt.Errorf("activate: %w", err)
				return
			}
			if err := f.c.Deactivate(0); err != nil {
				errs <- fmt.Errorf("deactivate: %w", err)
				return
			}
		}
	})
	for _, first := range []uint32{100, 200} {
		wg.Go(func() { // each client its own, as each process has
			c := &Client{Dir: f.dir}
			for id := first; id < first+n; id++ {
				if err := c.CreateSnap(id, 0); err != nil {
					errs <- fmt.Errorf("snapshot %d: %w", id, err)
					return
				}
				if id%2 == 1 {
					if err := c.Delete(id); err != nil {
						errs <- fmt.Errorf("delete %d: %w", id, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	f.waitStopped()
	want := []uint32{0}
	for _, first := range []uint32{100, 200} {
		for id := first; id < first+n; id += 2 {
			want = append(want, id)
		}
	}
	if st := f.status(); !hasDevices(st, want...) {
		t.Fatalf("devices %+v, want %v", st.Devices, want)
	}
	f.check()
}

func hasDevices(st Status, ids ...uint32) bool {
	var got []uint32
	for _, d := range st.Devices {
		got = append(got, d.ID)
	}
	slices.Sort(got)
	slices.Sort(ids)
	return slices.Equal(got, ids)
}

func mapped(st Status, id uint32) uint64 {
	for _, d := range st.Devices {
		if d.ID == id {
			return d.MappedBlocks
		}
	}
	return 0
}

// A prepared snapshot or delete happens only once prepare accepts, with the
// transaction id raised in its commit, with or without a server.
func TestPrepared(t *testing.T) {
	f := newFixture(t, thinp.Options{DataSize: 1 << 30})
	if err := f.c.CreateThin(1, 64<<20); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("refused")
	for _, server := range []bool{false, true} {
		if server {
			f.activate(1, false)
		}
		tx := f.status().TransactionID
		var seen uint64
		err := f.c.PreparedSnap(2, 1, func(st Status) error { seen = st.TransactionID; return refused })
		if !errors.Is(err, refused) || seen != tx || hasDevices(f.status(), 1, 2) {
			t.Fatalf("server %v: refused snapshot: %v, saw transaction %d of %d, devices %+v", server, err, seen, tx, f.status().Devices)
		}
		if err := f.c.PreparedSnap(2, 1, func(Status) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if st := f.status(); st.TransactionID != tx+1 || !hasDevices(st, 1, 2) {
			t.Fatalf("server %v: after a snapshot: transaction %d, want %d; devices %+v", server, st.TransactionID, tx+1, st.Devices)
		}
		if err := f.c.PreparedDelete(2, func(Status) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if st := f.status(); st.TransactionID != tx+2 || hasDevices(st, 1, 2) {
			t.Fatalf("server %v: after a delete: transaction %d, want %d; devices %+v", server, st.TransactionID, tx+2, st.Devices)
		}
		if (f.status().Pid != 0) != server {
			t.Fatalf("server %v: status pid %d", server, f.status().Pid)
		}
	}
	if err := f.c.Deactivate(1); err != nil {
		t.Fatal(err)
	}
	f.check()
}
