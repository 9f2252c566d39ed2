package thinp

import (
	"errors"
	"os"
	"testing"

	"github.com/strata-storage/strata/errdefs"
)

// crash drops a pool without committing, as a killed server would.
func crash(p *Pool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.data.Close()
	p.md.close()
	p.md = nil
}

// changeAfterCommit makes every kind of change a crash must undo: copies of
// shared blocks, new blocks, a discard, new and deleted devices.
func changeAfterCommit(t *testing.T, p *Pool) {
	t.Helper()
	m := model{0: {}}
	m.write(t, p, 0, 0, 5*16, 5000)
	m.write(t, p, 0, 20*16, 10*16, 6000)
	for _, err := range []error{
		p.Discard(0, 7*p.blockSize, p.blockSize),
		p.CreateThin(5, 1<<20),
		p.Delete(1),
		p.CreateSnap(2, 0),
		p.SetTransactionID(0, 9),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func committedPool(t *testing.T) (*Pool, model, string, string) {
	p, meta, data := newTestPool(t, Options{})
	if err := p.CreateThin(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	m := model{0: {}}
	m.write(t, p, 0, 0, 10*16, 1)
	if err := p.CreateSnap(1, 0); err != nil {
		t.Fatal(err)
	}
	m[1] = m.clone()[0]
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	return p, m, meta, data
}

// reopenAfterCrash checks that the pool reopens at the committed model and
// works on: the blocks the lost transaction took are free again.
func reopenAfterCrash(t *testing.T, m model, meta, data string) {
	t.Helper()
	p, err := Open(meta, data)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if st := p.Status(); st.TransactionID != 0 {
		t.Fatalf("transaction id %d after a crash, want 0", st.TransactionID)
	}
	m.check(t, p, 40)
	checkTools(t, p, m, meta)
	m.write(t, p, 1, 0, 40*16, 7000)
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, m, meta)
	m.check(t, p, 40)
}

// TestCrashBeforeCommit: nothing done after the last commit survives.
func TestCrashBeforeCommit(t *testing.T) {
	p, m, meta, data := committedPool(t)
	changeAfterCommit(t, p)
	crash(p)
	reopenAfterCrash(t, m, meta, data)
}

// TestCrashDuringCommit: a commit that wrote everything but the superblock
// leaves the previous transaction whole, since it overwrites no block the
// committed trees use.
func TestCrashDuringCommit(t *testing.T) {
	p, m, meta, data := committedPool(t)
	changeAfterCommit(t, p)
	f, err := os.OpenFile(meta, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := make([]byte, metaBlockSize)
	if _, err := f.ReadAt(old, 0); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	crash(p)
	if _, err := f.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	reopenAfterCrash(t, m, meta, data)
}

// TestOpenLocked: a second pool on the same files is refused.
func TestOpenLocked(t *testing.T) {
	_, meta, data := newTestPool(t, Options{})
	if _, err := Open(meta, data); !errors.Is(err, errdefs.ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
}
