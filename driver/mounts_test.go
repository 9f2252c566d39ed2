package driver

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/strata-storage/strata/errdefs"
)

// fakeMount stands for one mount point shared by every Mounts of a root,
// and fails the test when it is mounted twice or unmounted while unmounted.
type fakeMount struct {
	t       *testing.T
	mounted atomic.Int32
	mounts  atomic.Int32
}

func (f *fakeMount) mount() error {
	f.mounts.Add(1)
	// A dead holder's mount is replaced, as drivers do.
	f.mounted.Store(0)
	f.mounted.Add(1)
	return nil
}

func (f *fakeMount) unmount() error {
	if f.mounted.Add(-1) != 0 {
		f.t.Error("unmounted while not mounted")
	}
	return nil
}

func openMounts(t *testing.T, root string) *Mounts {
	t.Helper()
	m, err := OpenMounts(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(func(string) error { return nil }) })
	return m
}

func checkCount(t *testing.T, m *Mounts, id string, want int) {
	t.Helper()
	if n, err := m.Count(id); err != nil || n != want {
		t.Errorf("Count(%s) = %d, %v; want %d", id, n, err, want)
	}
}

func TestMountsSharedByProcesses(t *testing.T) {
	root := t.TempDir()
	a, b := openMounts(t, root), openMounts(t, root)
	f := &fakeMount{t: t}
	for _, m := range []*Mounts{a, a, b} {
		if err := m.Acquire("x", f.mount); err != nil {
			t.Fatal(err)
		}
	}
	if f.mounts.Load() != 1 {
		t.Errorf("mounted %d times for three Gets", f.mounts.Load())
	}
	checkCount(t, a, "x", 3) // two of a's, one for process b
	checkCount(t, b, "x", 2)
	for _, m := range []*Mounts{a, a} {
		if err := m.Release("x", f.unmount); err != nil {
			t.Fatal(err)
		}
	}
	if f.mounted.Load() != 1 {
		t.Error("unmounted while another process holds it")
	}
	if err := b.Release("x", f.unmount); err != nil {
		t.Fatal(err)
	}
	if f.mounted.Load() != 0 {
		t.Error("still mounted after the last Release")
	}
	if err := b.Release("x", f.unmount); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Release without Acquire: %v, want ErrInvalid", err)
	}
	if _, err := os.Stat(filepath.Join(root, ".mounts", "x")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("holders of an unused layer left on disk: %v", err)
	}
}

func TestMountsDeadHolders(t *testing.T) {
	root := t.TempDir()
	a, b := openMounts(t, root), openMounts(t, root)
	f := &fakeMount{t: t}
	if err := a.Acquire("x", f.mount); err != nil {
		t.Fatal(err)
	}
	checkCount(t, b, "x", 1)
	token := a.token.Name()
	a.token.Close() // a crashes: the kernel drops its flock
	a.token = nil
	checkCount(t, b, "x", 0)
	if _, err := os.Stat(token); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dead process token kept: %v", err)
	}
	if err := b.Acquire("x", f.mount); err != nil {
		t.Fatal(err)
	}
	if f.mounts.Load() != 2 {
		t.Error("the next Get did not replace the dead holder's mount")
	}
	if err := b.Release("x", f.unmount); err != nil {
		t.Fatal(err)
	}

	// A pin from an earlier boot: the reboot unmounted it.
	dir := filepath.Join(root, ".mounts", "y")
	os.MkdirAll(dir, 0o700)
	if err := os.WriteFile(filepath.Join(dir, "pin-old"), []byte("another-boot"), 0o600); err != nil {
		t.Fatal(err)
	}
	checkCount(t, b, "y", 0)
	if err := b.IfUnused("y", func() error { return nil }); err != nil {
		t.Errorf("IfUnused with only a dead pin: %v", err)
	}
}

func TestMountsPins(t *testing.T) {
	root := t.TempDir()
	a, b := openMounts(t, root), openMounts(t, root)
	f := &fakeMount{t: t}
	noop := func() error { return nil }
	if err := a.Pin("x", f.mount); err != nil {
		t.Fatal(err)
	}
	if err := a.Acquire("x", f.mount); err != nil {
		t.Fatal(err)
	}
	if err := b.Pin("x", f.mount); err != nil {
		t.Fatal(err)
	}
	if f.mounts.Load() != 1 {
		t.Errorf("mounted %d times", f.mounts.Load())
	}
	if err := b.IfUnused("x", noop); !errors.Is(err, errdefs.ErrInUse) {
		t.Errorf("IfUnused of a pinned layer: %v, want ErrInUse", err)
	}
	if err := a.Close(func(string) error { return f.unmount() }); err != nil {
		t.Fatal(err)
	}
	checkCount(t, b, "x", 2)
	for range 2 {
		if err := b.Unpin("x", f.unmount); err != nil {
			t.Fatal(err)
		}
	}
	if f.mounted.Load() != 0 {
		t.Error("still mounted after the last Unpin")
	}
	if err := b.Unpin("x", f.unmount); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Unpin without a pin: %v, want ErrInvalid", err)
	}
	if err := b.Pin("../x", f.mount); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Pin of an invalid id: %v, want ErrInvalid", err)
	}
}

func TestMountsFailures(t *testing.T) {
	m := openMounts(t, t.TempDir())
	boom := errors.New("boom")
	noop := func() error { return nil }
	if err := m.Acquire("x", func() error { return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	checkCount(t, m, "x", 0)
	if err := m.Acquire("x", noop); err != nil {
		t.Fatal(err)
	}
	if err := m.Release("x", func() error { return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	// The failed unmount kept the reference: the next Release retries it.
	checkCount(t, m, "x", 1)
	if err := m.Release("x", noop); err != nil {
		t.Errorf("retry of the last Release: %v", err)
	}
	checkCount(t, m, "x", 0)
}

func TestMountsRecover(t *testing.T) {
	root := t.TempDir()
	a := openMounts(t, root)
	noop := func() error { return nil }
	for _, id := range []string{"held", "pinned"} {
		if err := a.Acquire(id, noop); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Pin("pinned", noop); err != nil {
		t.Fatal(err)
	}
	a.token.Close() // crash
	a.token = nil
	b := openMounts(t, root)
	if err := b.Recover(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(root, ".mounts"))
	if len(entries) != 1 || entries[0].Name() != "pinned" {
		t.Errorf(".mounts holds %v, want only the pinned layer", entries)
	}
	checkCount(t, b, "pinned", 1)
	// The dead process's token is gone; b registers only at its first Get.
	tokens, _ := os.ReadDir(filepath.Join(root, ".procs"))
	if len(tokens) != 0 {
		t.Errorf(".procs holds %v, want nothing", tokens)
	}
	if err := b.Acquire("held", noop); err != nil {
		t.Fatal(err)
	}
	tokens, _ = os.ReadDir(filepath.Join(root, ".procs"))
	if len(tokens) != 1 || procPrefix+tokens[0].Name() != b.self {
		t.Errorf(".procs holds %v, want only the live process", tokens)
	}
}

// TestMountsConcurrent: Gets and Puts of two processes at once never mount
// twice, never unmount under a holder, and leave nothing mounted.
func TestMountsConcurrent(t *testing.T) {
	root := t.TempDir()
	procs := []*Mounts{openMounts(t, root), openMounts(t, root)}
	f := &fakeMount{t: t}
	mount := func() error {
		if f.mounted.Load() != 0 {
			t.Error("mounted while mounted")
		}
		return f.mount()
	}
	var wg sync.WaitGroup
	for i := range 16 {
		m := procs[i%2]
		wg.Go(func() {
			for range 50 {
				if err := m.Acquire("x", mount); err != nil {
					t.Error(err)
					return
				}
				if f.mounted.Load() != 1 {
					t.Error("not mounted while held")
				}
				if err := m.Release("x", f.unmount); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if f.mounted.Load() != 0 {
		t.Error("mounted after every Release")
	}
	checkCount(t, procs[0], "x", 0)
}
