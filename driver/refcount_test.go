package driver_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
)

func TestRefCounterMountsOnce(t *testing.T) {
	var r driver.RefCounter
	var mounted, mounts, unmounts atomic.Int32
	mount := func() error {
		if mounted.Add(1) != 1 {
			t.Error("mounted twice at once")
		}
		mounts.Add(1)
		return nil
	}
	unmount := func() error {
		mounted.Add(-1)
		unmounts.Add(1)
		return nil
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if err := r.Acquire("a", mount); err != nil {
					t.Error(err)
				}
				if err := r.Release("a", unmount); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if mounted.Load() != 0 || mounts.Load() != unmounts.Load() {
		t.Errorf("mounted=%d after %d mounts, %d unmounts", mounted.Load(), mounts.Load(), unmounts.Load())
	}
}

func TestRefCounterFailures(t *testing.T) {
	var r driver.RefCounter
	noop := func() error { return nil }
	boom := errors.New("boom")
	if err := r.Acquire("a", func() error { return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if err := r.Release("a", noop); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Release after a failed Acquire: %v, want ErrInvalid", err)
	}
	r.Acquire("a", noop)
	if err := r.IfUnused("a", noop); !errors.Is(err, errdefs.ErrInUse) {
		t.Errorf("IfUnused of a held id: %v, want ErrInUse", err)
	}
	if err := r.Release("a", func() error { return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	// The failed unmount kept the reference: the next Release retries it.
	if err := r.Release("a", noop); err != nil {
		t.Errorf("retry of the last Release: %v", err)
	}
	if err := r.IfUnused("a", noop); err != nil {
		t.Errorf("IfUnused once released: %v", err)
	}
}
