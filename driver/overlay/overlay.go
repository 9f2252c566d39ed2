// Package overlay is the driver on kernel overlayfs: a layer is an upper
// directory stacked on the upper directories of its parents, so creating
// one costs a few mkdirs and its diff is read from one directory.
//
// On disk, under the driver root (the overlay2 layout):
//
//	<id>/diff         the layer's own files; whiteouts are 0/0 character
//	                  devices, opaque directories carry trusted.overlay.opaque=y
//	<id>/link         the layer's short name: l/<link> -> ../<id>/diff
//	<id>/lower        the parents' short links, nearest first: "l/A:l/B"
//	                  (absent for a base layer)
//	<id>/work         overlay's work dir (read-write layers with a parent)
//	<id>/merged       the mount point (layers with a parent), made at the
//	                  first mount: a container that is never mounted costs
//	                  one directory less to create and to remove
//	<id>/parent       the parent id; <id>/children/<c> marks each child
//	l/<26 chars>      short symlinks to the diff dirs
//	.supported        the support probe passed here
//	.lock             held shared by every process using the root (driver.RootLock)
//	.procs/<token>    one per process using the root (driver.Mounts)
//	.mounts/<id>/     who holds layer id's mount: processes and pins (driver.Mounts)
//	.tmp-<id>, .removing-<id>
//	                  staging names; a crash leaves only these (and
//	                  mounts nobody holds), and New removes them when no
//	                  other process uses the root
//
// A layer exists once <id> does: it is built as .tmp-<id> and renamed.
package overlay

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/moby/sys/mountinfo"
	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
)

const (
	name = "overlay"
	// maxLowers is the kernel's limit of lower layers in one mount; a
	// read-only layer mounts its own diff as one of them.
	maxLowers = 500
	linkDir   = "l"
)

func init() {
	driver.Register(name, New)
}

// Driver is the overlay graph driver.
type Driver struct {
	root    string
	lineage driver.Lineage
	mounts  *driver.Mounts
	naive   driver.Driver // for diffs against a layer other than the parent
	held    *driver.Root  // d.mounts is held.Mounts

	mu sync.Mutex // serializes Create and Remove
}

// New starts an overlay driver with its state in root. It takes no options
// and fails with errdefs.ErrNotSupported where overlay does not work.
func New(root string, options map[string]string) (driver.Driver, error) {
	if err := driver.CheckOptions(name, options); err != nil {
		return nil, err
	}
	if err := kernelHasOverlay(); err != nil {
		return nil, err
	}
	_, statErr := os.Stat(root)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	d := &Driver{root: root}
	d.lineage = driver.Lineage{Dir: d.dir, Exists: d.Exists}
	d.naive = driver.NaiveDiff(d)
	// When no other process uses the root, remove what crashed ones left:
	// mounts nobody holds, staging dirs, dead links.
	held, err := driver.OpenRoot(root, func(m *driver.Mounts) error {
		d.mounts = m
		return errors.Join(d.unmountStale(), d.removeLeftovers())
	})
	if err == nil {
		d.held, d.mounts = held, held.Mounts
		err = d.start()
		if err != nil {
			held.Close(d.unmount)
		}
	}
	if err != nil {
		if errors.Is(statErr, fs.ErrNotExist) {
			os.RemoveAll(root) // leave no state behind for the automatic choice
		}
		return nil, err
	}
	return d, nil
}

// start checks that overlay works here.
func (d *Driver) start() error {
	if err := checkSupport(d.root); err != nil {
		return err
	}
	return os.MkdirAll(filepath.Join(d.root, linkDir), 0o700)
}

func (d *Driver) dir(id string) string { return filepath.Join(d.root, id) }

// removeLeftovers deletes staging dirs and the short links a crash
// mid-Remove left pointing nowhere.
func (d *Driver) removeLeftovers() error {
	entries, err := os.ReadDir(d.root)
	if err != nil {
		return err
	}
	staged := false
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".tmp-") || strings.HasPrefix(n, ".removing-") || strings.HasPrefix(n, ".probe-") {
			if err := os.RemoveAll(filepath.Join(d.root, n)); err != nil {
				return err
			}
			staged = staged || !strings.HasPrefix(n, ".probe-")
		}
	}
	// A link dangles only after a crash mid-Create or mid-Remove, which
	// leaves a staging dir: without one, there is no link to look at.
	if !staged {
		return nil
	}
	links, err := os.ReadDir(filepath.Join(d.root, linkDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, l := range links {
		link := filepath.Join(d.root, linkDir, l.Name())
		if _, err := os.Stat(link); errors.Is(err, fs.ErrNotExist) {
			if err := os.Remove(link); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *Driver) String() string { return name }

func (d *Driver) Create(id, parent string, opts *driver.CreateOpts) error {
	return d.create(id, parent, opts, false)
}

func (d *Driver) CreateReadWrite(id, parent string, opts *driver.CreateOpts) error {
	return d.create(id, parent, opts, true)
}

func (d *Driver) create(id, parent string, opts *driver.CreateOpts, rw bool) error {
	if err := validID(id); err != nil {
		return err
	}
	if opts != nil && len(opts.StorageOpt) > 0 {
		return fmt.Errorf("create layer %s: overlay takes no per-layer storage options: %w", id, errdefs.ErrNotSupported)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.Exists(id) {
		return fmt.Errorf("create layer %s: %w", id, errdefs.ErrExists)
	}
	var lower string
	if parent != "" {
		if !d.Exists(parent) {
			return fmt.Errorf("create layer %s: parent %s: %w", id, parent, errdefs.ErrNotFound)
		}
		var err error
		if lower, err = d.lowerOf(parent); err != nil {
			return fmt.Errorf("create layer %s: %w", id, err)
		}
		if n := strings.Count(lower, ":") + 1; n >= maxLowers {
			return fmt.Errorf("create layer %s: %d parents, overlay stacks at most %d: %w",
				id, n, maxLowers-1, errdefs.ErrInvalid)
		}
		if err := d.lineage.Adopt(parent, id); err != nil {
			return fmt.Errorf("create layer %s: %w", id, err)
		}
	}
	tmp := d.dir(".tmp-" + id)
	if err := d.stage(tmp, id, parent, lower, rw); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	return nil
}

// lowerOf returns the lower file content for a child of parent.
func (d *Driver) lowerOf(parent string) (string, error) {
	link, err := os.ReadFile(filepath.Join(d.dir(parent), "link"))
	if err != nil {
		return "", err
	}
	lower := linkDir + "/" + string(link)
	parentLower, err := os.ReadFile(filepath.Join(d.dir(parent), "lower"))
	if err == nil {
		lower += ":" + string(parentLower)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return lower, nil
}

// stage builds the layer in tmp and renames it to its id.
func (d *Driver) stage(tmp, id, parent, lower string, rw bool) error {
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	diff := filepath.Join(tmp, "diff")
	if err := os.Mkdir(diff, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(diff, 0o755); err != nil { // whatever the umask
		return err
	}
	if parent != "" {
		if rw {
			if err := os.Mkdir(filepath.Join(tmp, "work"), 0o700); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(tmp, "lower"), []byte(lower), 0o600); err != nil {
			return err
		}
		if err := driver.WriteParent(tmp, parent); err != nil {
			return err
		}
	}
	link, err := newLink()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "link"), []byte(link), 0o600); err != nil {
		return err
	}
	// The link dangles until the rename below and is removed at start if
	// the rename never happens.
	links := filepath.Join(d.root, linkDir)
	if err := os.Symlink(filepath.Join("..", id, "diff"), filepath.Join(links, link)); err != nil {
		return err
	}
	if err := os.Rename(tmp, d.dir(id)); err != nil {
		os.Remove(filepath.Join(links, link))
		return err
	}
	return nil // durable at the caller's SyncFS, see driver.ProtoDriver.Create
}

// newLink returns a random 26-character short link name.
func newLink() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b), nil
}

func validID(id string) error {
	if id == linkDir {
		return fmt.Errorf("invalid layer id %q: reserved by overlay: %w", id, errdefs.ErrInvalid)
	}
	return driver.ValidID(id)
}

func (d *Driver) Remove(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.Exists(id) {
		return fmt.Errorf("remove layer %s: %w", id, errdefs.ErrNotFound)
	}
	return d.mounts.IfUnused(id, func() error {
		if err := d.lineage.CheckRemovable(id); err != nil {
			return err
		}
		if err := d.remove(id); err != nil {
			return fmt.Errorf("remove layer %s: %w", id, err)
		}
		return nil
	})
}

// remove renames the layer out of sight first, so that a crash never
// leaves a half-removed layer that looks complete.
func (d *Driver) remove(id string) error {
	dir := d.dir(id)
	parent, err := d.lineage.Parent(id)
	if err != nil {
		return err
	}
	link, err := os.ReadFile(filepath.Join(dir, "link"))
	if err != nil {
		return err
	}
	if err := unmount(filepath.Join(dir, "merged")); err != nil { // left by a dead holder
		return err
	}
	removing := d.dir(".removing-" + id)
	if err := os.Rename(dir, removing); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(d.root, linkDir, string(link))); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if parent != "" {
		if err := d.lineage.Disown(parent, id); err != nil {
			return err
		}
	}
	return os.RemoveAll(removing)
}

func (d *Driver) Exists(id string) bool {
	if validID(id) != nil {
		return false
	}
	fi, err := os.Lstat(d.dir(id))
	return err == nil && fi.IsDir()
}

// layer is what Get needs to know of a layer on disk.
type layer struct {
	diff   string
	lowers []string // full paths of the parents' diff dirs, nearest first
	rw     bool     // has an upper to mount: a work dir exists
}

func (d *Driver) load(id string) (layer, error) {
	if !d.Exists(id) {
		return layer{}, fmt.Errorf("layer %s: %w", id, errdefs.ErrNotFound)
	}
	dir := d.dir(id)
	l := layer{diff: filepath.Join(dir, "diff")}
	lower, err := os.ReadFile(filepath.Join(dir, "lower"))
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return layer{}, err
	}
	for _, short := range strings.Split(string(lower), ":") {
		l.lowers = append(l.lowers, filepath.Join(d.root, short))
	}
	if _, err := os.Stat(filepath.Join(dir, "work")); err == nil {
		l.rw = true
	}
	return l, nil
}

// Get returns the diff dir of a base layer, which needs no mount but is
// still counted, and otherwise mounts the layer at <id>/merged: read-write
// layers with their diff as upper dir, read-only ones as a read-only stack
// of lowers. mountLabel is ignored: strata does not run SELinux contexts.
func (d *Driver) Get(id, mountLabel string) (string, error) {
	path, mount, err := d.mounter(id)
	if err != nil {
		return "", err
	}
	if err := d.mounts.Acquire(id, mount); err != nil {
		return "", fmt.Errorf("get layer %s: %w", id, err)
	}
	return path, nil
}

func (d *Driver) Put(id string) error {
	return d.mounts.Release(id, func() error { return d.unmount(id) })
}

// Pin mounts the layer as Get does, for a reference that outlives this
// process.
func (d *Driver) Pin(id, mountLabel string) (string, error) {
	path, mount, err := d.mounter(id)
	if err != nil {
		return "", err
	}
	if err := d.mounts.Pin(id, mount); err != nil {
		return "", fmt.Errorf("pin layer %s: %w", id, err)
	}
	return path, nil
}

func (d *Driver) Unpin(id string) error {
	return d.mounts.Unpin(id, func() error { return d.unmount(id) })
}

func (d *Driver) Mounted(id string) (int, error) {
	if !d.Exists(id) {
		return 0, fmt.Errorf("layer %s: %w", id, errdefs.ErrNotFound)
	}
	return d.mounts.Count(id)
}

// mounter returns the root path of layer id and the func that mounts it
// there. A holder that died may have left the layer mounted: the func
// unmounts first, so that mounts never stack.
func (d *Driver) mounter(id string) (string, func() error, error) {
	l, err := d.load(id)
	if err != nil {
		return "", nil, err
	}
	if len(l.lowers) == 0 {
		return l.diff, func() error { return nil }, nil
	}
	merged := filepath.Join(d.dir(id), "merged")
	return merged, func() error {
		if err := unmount(merged); err != nil {
			return err
		}
		if err := os.Mkdir(merged, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if l.rw {
			return mountOverlay(d.root, merged, l.lowers, l.diff, filepath.Join(d.dir(id), "work"))
		}
		return mountOverlay(d.root, merged, append([]string{l.diff}, l.lowers...), "", "")
	}, nil
}

// unmount unmounts layer id's merged dir, if it has one.
func (d *Driver) unmount(id string) error {
	if _, err := os.Stat(filepath.Join(d.dir(id), "lower")); err != nil {
		return nil // a base layer: nothing mounted
	}
	return unmount(filepath.Join(d.dir(id), "merged"))
}

func (d *Driver) Status() [][2]string {
	return [][2]string{
		{"Backing Filesystem", driver.BackingFS(d.root)},
		{"Supports d_type", "true"},
		{"Native Overlay Diff", "true"},
	}
}

// Metadata returns the directories as docker inspect shows them; LowerDir
// holds full paths, nearest first.
func (d *Driver) Metadata(id string) (map[string]string, error) {
	l, err := d.load(id)
	if err != nil {
		return nil, err
	}
	dir := d.dir(id)
	m := map[string]string{
		"UpperDir":  l.diff,
		"WorkDir":   filepath.Join(dir, "work"),
		"MergedDir": filepath.Join(dir, "merged"),
	}
	if len(l.lowers) > 0 {
		lowers := make([]string, len(l.lowers))
		for i, short := range l.lowers {
			target, err := os.Readlink(short)
			if err != nil {
				return nil, err
			}
			lowers[i] = filepath.Join(filepath.Dir(short), target)
		}
		m["LowerDir"] = strings.Join(lowers, ":")
	}
	return m, nil
}

// Capabilities: ApplyDiff writes only the layer's own diff dir. A
// read-write layer is left to the caller's SyncFS: it is a handful of
// entries, but an fsync of each costs a flush of the disk's cache apiece
// (about 1 ms here), where one syncfs costs one.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{ParallelApply: true}
}

// Cleanup releases this process's Get references, unmounting what no
// other process or pin holds, and releases the root. Pinned layers stay
// mounted; those of crashed processes go at the next New that is alone.
func (d *Driver) Cleanup() error {
	return d.held.Close(d.unmount)
}

// unmountStale unmounts every mount under the root except the merged dirs
// of layers that still have a live holder (pins): only for a root no other
// process uses, once dead holders are gone.
func (d *Driver) unmountStale() error {
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !strings.HasPrefix(m.Mountpoint, d.root+"/"), false
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		id, sub, _ := strings.Cut(strings.TrimPrefix(m.Mountpoint, d.root+"/"), "/")
		if sub == "merged" && d.Exists(id) {
			n, err := d.mounts.Count(id)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if n > 0 {
				continue
			}
		}
		errs = append(errs, unmount(m.Mountpoint))
	}
	return errors.Join(errs...)
}
