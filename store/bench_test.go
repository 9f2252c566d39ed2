package store

import (
	"os"
	"testing"

	"github.com/strata-storage/strata/container"
)

// benchStore opens a store on driver with a two-layer image bench:1 and one
// container of it, so that the image's init layer exists: what a create or
// an rm costs in the library, without a CLI's start (bench/daemon.sh's API
// rows add HTTP to it).
func benchStore(b *testing.B, driver string) *Store {
	if os.Geteuid() != 0 {
		b.Skip("needs root: the drivers chown and mount")
	}
	s, err := Open(Options{Root: b.TempDir(), Driver: driver})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	addImage(b, s, []string{"a", "b"}, "bench:1")
	if _, err := s.CreateContainer("bench:1", container.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	return s
}

func BenchmarkCreateContainer(b *testing.B) {
	for _, driver := range []string{"overlay", "vfs"} {
		b.Run(driver, func(b *testing.B) {
			s := benchStore(b, driver)
			for b.Loop() {
				if _, err := s.CreateContainer("bench:1", container.CreateOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRemoveContainer(b *testing.B) {
	for _, driver := range []string{"overlay", "vfs"} {
		b.Run(driver, func(b *testing.B) {
			s := benchStore(b, driver)
			for b.Loop() {
				b.StopTimer()
				c, err := s.CreateContainer("bench:1", container.CreateOptions{})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := s.RemoveContainer(c, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
