package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/strata-storage/strata/errdefs"
)

// priority is the order in which New tries drivers when none is named and
// none has state yet: the fastest that works on this host wins. overlay
// first, as current Docker chooses: even on a btrfs root it diffs and
// commits several times faster than btrfs snapshots compared file by file
// (bench/btrfs.sh); btrfs only starts on btrfs; aufs (FUSE) is the union for
// hosts without overlayfs; devicemapper needs a pool of its own, so it is
// tried only before copying whole trees.
var priority = []string{"overlay", "btrfs", "aufs", "devicemapper", "vfs"}

var (
	registryMu sync.Mutex
	registry   = map[string]InitFunc{}
)

// Register makes a driver available by name. Drivers call it from init;
// registering a name twice is a programming error and panics.
func Register(name string, f InitFunc) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("driver: Register called twice for " + name)
	}
	registry[name] = f
}

// Names returns the registered driver names, sorted.
func Names() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	names := make([]string, 0, len(registry))
	for name := range registry {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func lookup(name string) (InitFunc, bool) {
	registryMu.Lock()
	defer registryMu.Unlock()
	f, ok := registry[name]
	return f, ok
}

// New starts the driver name with its state in <storeRoot>/<name>. An empty
// name picks one: the driver that already has state under storeRoot, else
// the first in priority order whose init does not fail with
// errdefs.ErrNotSupported.
func New(storeRoot, name string, options map[string]string) (Driver, error) {
	if name != "" {
		f, ok := lookup(name)
		if !ok {
			return nil, fmt.Errorf("unknown storage driver %q (registered: %s): %w",
				name, strings.Join(Names(), ", "), errdefs.ErrNotFound)
		}
		return f(filepath.Join(storeRoot, name), options)
	}

	names := Names()
	var used []string
	for _, n := range names {
		if hasState(filepath.Join(storeRoot, n)) {
			used = append(used, n)
		}
	}
	switch {
	case len(used) == 1:
		return New(storeRoot, used[0], options)
	case len(used) > 1:
		return nil, fmt.Errorf("storage drivers %s all have state in %s: pick one with --storage-driver: %w",
			strings.Join(used, ", "), storeRoot, errdefs.ErrInvalid)
	}

	// Priority order first, then any other registered driver by name.
	order := slices.Clone(priority)
	for _, n := range names {
		if !slices.Contains(order, n) {
			order = append(order, n)
		}
	}
	for _, n := range order {
		f, ok := lookup(n)
		if !ok {
			continue
		}
		d, err := f(filepath.Join(storeRoot, n), options)
		if errors.Is(err, errdefs.ErrNotSupported) {
			continue
		}
		return d, err
	}
	return nil, fmt.Errorf("no storage driver works in %s (registered: %s): %w",
		storeRoot, strings.Join(names, ", "), errdefs.ErrNotSupported)
}

// hasState reports whether dir exists and holds anything.
func hasState(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) > 0
}
