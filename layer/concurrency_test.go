package layer

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestConcurrentRegistrationStoresOnce(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		srcs := []Source{
			plain(makeTar(t, []entry{file("a", "1")}, 0)),
			plain(makeTar(t, []entry{file("b", "2")}, 0)),
		}
		var wg sync.WaitGroup
		results := make([][]Layer, 4)
		for i := range results {
			lease := newLease(t, s)
			wg.Go(func() {
				var err error
				if results[i], err = s.RegisterChain(t.Context(), lease, "", srcs); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		for _, r := range results[1:] {
			if !slices.Equal(r, results[0]) {
				t.Errorf("registrations disagree: %+v vs %+v", r, results[0])
			}
		}
		if layers, _ := s.List(); len(layers) != 2 {
			t.Errorf("%d layers recorded, want 2", len(layers))
		}
		if ids := driverLayers(t, s); len(ids) != 2 {
			t.Errorf("driver holds %d layers, want 2", len(ids))
		}
	})
}

// TestLostRaceRegistersTheRestOnTheWinner makes another registration record
// the base layer while ours is applying the layers above it: ours must drop
// its copies and build the rest on the winner's base.
func TestLostRaceRegistersTheRestOnTheWinner(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		base := makeTar(t, []entry{file("a", "1")}, 0)
		mid := makeTar(t, []entry{file("b", "2")}, 0)
		top := makeTar(t, []entry{file("c", "3")}, 0)
		stalled, resume := make(chan struct{}), make(chan struct{})
		var opens atomic.Int32
		topSrc := plain(top)
		topSrc.Open = func() (io.ReadCloser, error) {
			if opens.Add(1) == 1 {
				close(stalled)
				<-resume
			}
			return io.NopCloser(bytes.NewReader(top)), nil
		}

		var ours []Layer
		done := make(chan error)
		go func() {
			var err error
			ours, err = s.RegisterChain(t.Context(), newLease(t, s), "", []Source{plain(base), plain(mid), topSrc})
			done <- err
		}()
		<-stalled
		winner, err := s.RegisterChain(t.Context(), newLease(t, s), "", []Source{plain(base)})
		if err != nil {
			t.Fatal(err)
		}
		close(resume)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if ours[0] != winner[0] || ours[1].Parent != winner[0].ChainID {
			t.Errorf("base %+v, want the winner's %+v", ours[0], winner[0])
		}
		if opens.Load() != 2 {
			t.Errorf("top source opened %d times, want 2 (once per attempt)", opens.Load())
		}
		if ids := driverLayers(t, s); len(ids) != 3 {
			t.Errorf("driver holds %d layers, want 3", len(ids))
		}
		if got := tarStreamBytes(t, s, ours[2].ChainID); !bytes.Equal(got, top) {
			t.Error("TarStream of the top layer differs from its tar")
		}
	})
}

func TestGCKeepsSharedLayers(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		a := plain(makeTar(t, []entry{file("a", "1")}, 0))
		b := plain(makeTar(t, []entry{file("b", "2")}, 0))
		c := plain(makeTar(t, []entry{file("c", "3")}, 0))
		lease := newLease(t, s)
		ab, err := s.RegisterChain(t.Context(), lease, "", []Source{a, b})
		if err != nil {
			t.Fatal(err)
		}
		ac, err := s.RegisterChain(t.Context(), lease, "", []Source{a, c})
		if err != nil {
			t.Fatal(err)
		}
		s.setRoots(ab[1].ChainID, ac[1].ChainID)
		if err := lease.Release(); err != nil {
			t.Fatal(err)
		}
		if n, err := s.References(ab[0].ChainID); err != nil || n != 2 {
			t.Errorf("references of the shared base = %d, %v; want 2", n, err)
		}
		if n, err := s.References(ab[1].ChainID); err != nil || n != 1 {
			t.Errorf("references of an image's top = %d, %v; want 1", n, err)
		}

		gc := func(want ...digest.Digest) {
			t.Helper()
			deleted, err := s.GC()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(deleted, want) {
				t.Errorf("GC deleted %v, want %v", deleted, want)
			}
		}
		gc()
		s.setRoots(ab[1].ChainID)
		gc(ac[1].ChainID)
		if ids := driverLayers(t, s); len(ids) != 2 {
			t.Errorf("driver holds %d layers, want 2", len(ids))
		}
		if _, err := os.Stat(s.layerDir(ac[1].ChainID)); !os.IsNotExist(err) {
			t.Errorf("tar-split of a deleted layer: %v", err)
		}
		s.setRoots()
		gc(ab[1].ChainID, ab[0].ChainID) // children first
		assertEmpty(t, s)
		if names := readDirNames(t, filepath.Join(s.root, "layerdb")); !slices.Equal(names, []string{"tmp"}) {
			t.Errorf("layerdb holds %v, want only tmp", names)
		}
		if names := readDirNames(t, s.leaseDir()); len(names) != 0 {
			t.Errorf("lease files left: %v", names)
		}
	})
}

func TestGCSparesLiveLeases(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		held := plain(makeTar(t, []entry{file("held", "1")}, 0))
		raw := makeTar(t, []entry{file("a", "1"), file("b", "2")}, 0)
		lease := newLease(t, s)
		if _, err := s.RegisterChain(t.Context(), lease, "", []Source{held}); err != nil {
			t.Fatal(err)
		}
		stalled, resume := make(chan struct{}), make(chan struct{})
		src := plain(raw)
		src.Open = func() (io.ReadCloser, error) {
			return io.NopCloser(io.MultiReader(bytes.NewReader(raw[:600]), readerFunc(func(p []byte) (int, error) {
				close(stalled)
				<-resume
				return 0, io.EOF
			}), bytes.NewReader(raw[600:]))), nil
		}
		done := make(chan error)
		go func() {
			_, err := s.RegisterChain(t.Context(), lease, "", []Source{src})
			done <- err
		}()
		<-stalled
		if deleted, err := s.GC(); err != nil || len(deleted) != 0 {
			t.Errorf("GC during a registration deleted %v, %v", deleted, err)
		}
		close(resume)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if layers, _ := s.List(); len(layers) != 2 {
			t.Errorf("%d layers recorded, want 2", len(layers))
		}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestDeadLeaseIsCleanedAtNextOpen kills a process in the middle of
// registering layers and checks that the next process to open the store
// removes everything it made.
func TestDeadLeaseIsCleanedAtNextOpen(t *testing.T) {
	if root := os.Getenv("STRATA_LAYER_CRASH_ROOT"); root != "" {
		crashMidRegistration(t, root)
		return
	}
	root := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDeadLeaseIsCleanedAtNextOpen$")
	cmd.Env = append(os.Environ(), "STRATA_LAYER_CRASH_ROOT="+root)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "stalled" {
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	s := openStore(t, root, "vfs")
	if layers, _ := s.List(); len(layers) != 1 {
		t.Fatalf("the child recorded %d layers before dying, want 1", len(layers))
	}
	if ids := driverLayers(t, s); len(ids) != 2 {
		t.Fatalf("the child left %d driver layers, want 2 (one recorded, one pending)", len(ids))
	}
	if _, err := s.GC(); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, s)
	if names := readDirNames(t, s.leaseDir()); len(names) != 0 {
		t.Errorf("lease files left: %v", names)
	}
}

// crashMidRegistration registers one layer, then stalls inside a second one
// and says so on stdout, for the parent to kill it.
func crashMidRegistration(t *testing.T, root string) {
	s := openStore(t, root, "vfs")
	lease, err := s.NewLease()
	if err != nil {
		t.Fatal(err)
	}
	first := plain(makeTar(t, []entry{file("first", "1")}, 0))
	if _, err := s.RegisterChain(t.Context(), lease, "", []Source{first}); err != nil {
		t.Fatal(err)
	}
	raw := makeTar(t, []entry{file("a", "1"), file("b", "2")}, 0)
	src := plain(raw)
	src.Open = func() (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(bytes.NewReader(raw[:600]), readerFunc(func([]byte) (int, error) {
			os.Stdout.WriteString("stalled\n")
			select {}
		}))), nil
	}
	s.RegisterChain(t.Context(), lease, first.DiffID, []Source{src})
}
