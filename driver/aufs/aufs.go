// Package aufs is the driver of the seed's first file system: a layer is a
// directory of its own files, mounted as a union with its parents'. The
// aufs module never reached mainline Linux, so the union is strata's own
// (package unionfs, served with FUSE by a server process per mount); the
// module is used where /proc/filesystems lists it.
//
// On disk, under the driver root (Docker's aufs layout, plus meta/):
//
//	diff/<id>         the layer's own files; whiteouts as aufs and layer
//	                  tars spell them (.wh.<name>, .wh..wh..opq), so
//	                  ApplyDiff writes a tar's entries as they come and Diff
//	                  is a tar of this directory
//	layers/<id>       the parent ids, nearest first, one per line; the layer
//	                  exists once this file does (written last, by rename)
//	mnt/<id>          where the union is mounted (layers with a parent)
//	meta/<id>/        parent, children/<c> (driver.Lineage), rw (a
//	                  read-write layer), serve.lock (held while the layer's
//	                  union is mounted, unmounted or revived)
//	.passthrough      whether the last FUSE mount got passthrough, for Status
//	.lock, .procs/, .mounts/
//	                  the root lock and the mount holders (driver.Mounts)
//	*-removing, layers/.tmp-*
//	                  staging names: Remove renames a layer out of sight
//	                  first; a crash leaves only these and directories
//	                  without a layers/<id>, which New removes when no other
//	                  process uses the root
package aufs

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
)

const (
	name            = "aufs"
	removingSuffix  = "-removing"
	optPassthrough  = "aufs.passthrough"
	passthroughFile = ".passthrough"
)

func init() {
	driver.Register(name, New)
}

// Driver is the aufs graph driver.
type Driver struct {
	root        string
	kernel      bool // the aufs module mounts; else unionfs over FUSE
	passthrough bool
	lineage     driver.Lineage
	naive       driver.Driver
	held        *driver.Root
	mounts      *driver.Mounts

	mu sync.Mutex // serializes Create and Remove
}

// New starts the driver with its state in root. Its one option,
// aufs.passthrough (default true), turns FUSE passthrough off. It fails
// with errdefs.ErrNotSupported where neither the aufs module nor FUSE is
// there.
func New(root string, options map[string]string) (driver.Driver, error) {
	if err := driver.CheckOptions(name, options, optPassthrough); err != nil {
		return nil, err
	}
	d := &Driver{root: root, kernel: kernelHasAufs(), passthrough: true}
	if v, ok := options[optPassthrough]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("storage option %s=%q: %w", optPassthrough, v, errdefs.ErrInvalid)
		}
		d.passthrough = b
	}
	if !d.kernel {
		if _, err := os.Stat("/dev/fuse"); err != nil {
			return nil, fmt.Errorf("aufs: no aufs module and no /dev/fuse: %w", errdefs.ErrNotSupported)
		}
	}
	_, statErr := os.Stat(root)
	for _, dir := range []string{"", "diff", "layers", "mnt", "meta"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o700); err != nil {
			return nil, err
		}
	}
	d.lineage = driver.Lineage{Dir: d.meta, Exists: d.Exists}
	d.naive = driver.NaiveDiff(d)
	held, err := driver.OpenRoot(root, func(m *driver.Mounts) error {
		d.mounts = m
		return errors.Join(d.unmountStale(), d.removeLeftovers())
	})
	if err != nil {
		if errors.Is(statErr, fs.ErrNotExist) {
			os.RemoveAll(root) // leave no state behind for the automatic choice
		}
		return nil, err
	}
	d.held, d.mounts = held, held.Mounts
	return d, nil
}

func (d *Driver) String() string { return name }

func (d *Driver) diff(id string) string   { return filepath.Join(d.root, "diff", id) }
func (d *Driver) layers(id string) string { return filepath.Join(d.root, "layers", id) }
func (d *Driver) mnt(id string) string    { return filepath.Join(d.root, "mnt", id) }
func (d *Driver) meta(id string) string   { return filepath.Join(d.root, "meta", id) }

// removeLeftovers deletes what a crash mid-Create or mid-Remove left: the
// staging names, and the directories of layers without a layers/<id>.
func (d *Driver) removeLeftovers() error {
	for _, sub := range []string{"diff", "mnt", "meta", "layers"} {
		entries, err := os.ReadDir(filepath.Join(d.root, sub))
		if err != nil {
			return err
		}
		for _, e := range entries {
			n := e.Name()
			stale := strings.HasSuffix(n, removingSuffix) || strings.HasPrefix(n, ".tmp-")
			if !stale && sub != "layers" {
				stale = !d.Exists(n)
			}
			if stale {
				if err := os.RemoveAll(filepath.Join(d.root, sub, n)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

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
		return fmt.Errorf("create layer %s: aufs takes no per-layer storage options: %w", id, errdefs.ErrNotSupported)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.Exists(id) {
		return fmt.Errorf("create layer %s: %w", id, errdefs.ErrExists)
	}
	var parents []string
	if parent != "" {
		var err error
		if parents, err = d.parents(parent); err != nil {
			return fmt.Errorf("create layer %s: parent %s: %w", id, parent, err)
		}
		parents = append([]string{parent}, parents...)
		if err := d.lineage.Adopt(parent, id); err != nil {
			return fmt.Errorf("create layer %s: %w", id, err)
		}
	}
	if err := d.stage(id, parent, parents, rw); err != nil {
		for _, p := range []string{d.diff(id), d.mnt(id), d.meta(id)} {
			os.RemoveAll(p)
		}
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	return nil
}

// stage makes the layer's directories, then its layers file, which makes
// it exist.
func (d *Driver) stage(id, parent string, parents []string, rw bool) error {
	if err := os.Mkdir(d.diff(id), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(d.diff(id), 0o755); err != nil { // whatever the umask
		return err
	}
	for _, dir := range []string{d.mnt(id), d.meta(id)} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
	}
	if err := driver.WriteParent(d.meta(id), parent); err != nil {
		return err
	}
	if rw {
		if err := os.WriteFile(filepath.Join(d.meta(id), "rw"), nil, 0o600); err != nil {
			return err
		}
	}
	var content string
	for _, p := range parents {
		content += p + "\n"
	}
	tmp := d.layers(".tmp-" + id)
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, d.layers(id)); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil // durable at the caller's SyncFS, see driver.ProtoDriver.Create
}

func validID(id string) error {
	if strings.HasSuffix(id, removingSuffix) {
		return fmt.Errorf("invalid layer id %q: reserved by aufs: %w", id, errdefs.ErrInvalid)
	}
	return driver.ValidID(id)
}

func (d *Driver) Exists(id string) bool {
	if validID(id) != nil {
		return false
	}
	fi, err := os.Lstat(d.layers(id))
	return err == nil && fi.Mode().IsRegular()
}

// parents reads layers/<id>: the parent ids, nearest first.
func (d *Driver) parents(id string) ([]string, error) {
	if !d.Exists(id) {
		return nil, fmt.Errorf("layer %s: %w", id, errdefs.ErrNotFound)
	}
	f, err := os.Open(d.layers(id))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line := strings.TrimSpace(s.Text()); line != "" {
			ids = append(ids, line)
		}
	}
	return ids, s.Err()
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
// leaves a half-removed layer that looks complete (Docker's aufs #9665
// "device busy" came from removing in place).
func (d *Driver) remove(id string) error {
	parent, err := d.lineage.Parent(id)
	if err != nil {
		return err
	}
	if err := unmount(d.mnt(id)); err != nil { // left by a dead holder
		return err
	}
	if err := os.Rename(d.layers(id), d.layers(id+removingSuffix)); err != nil {
		return err
	}
	var errs []error
	for _, dir := range []string{d.diff(id), d.mnt(id), d.meta(id)} {
		if err := os.Rename(dir, dir+removingSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if parent != "" {
		errs = append(errs, d.lineage.Disown(parent, id))
	}
	for _, p := range []string{d.diff(id), d.mnt(id), d.meta(id), d.layers(id)} {
		errs = append(errs, os.RemoveAll(p+removingSuffix))
	}
	return errors.Join(errs...)
}

func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{ParallelApply: true} // ApplyDiff writes only diff/<id>
}

func (d *Driver) Metadata(id string) (map[string]string, error) {
	parents, err := d.parents(id)
	if err != nil {
		return nil, err
	}
	branches := []string{d.diff(id)}
	for _, p := range parents {
		branches = append(branches, d.diff(p))
	}
	m := map[string]string{"DiffDir": d.diff(id), "Branches": strings.Join(branches, ":")}
	if len(parents) > 0 {
		m["MergedDir"] = d.mnt(id)
	}
	return m, nil
}

func (d *Driver) Status() [][2]string {
	layers, _ := os.ReadDir(filepath.Join(d.root, "layers"))
	mode := "fuse (strata unionfs, a server process per mount)"
	if d.kernel {
		mode = "kernel aufs module (unverified)"
	}
	status := [][2]string{
		{"Root Dir", d.root},
		{"Backing Filesystem", driver.BackingFS(d.root)},
		{"Dirs", strconv.Itoa(len(layers))},
		{"Max Branches", strconv.Itoa(d.maxBranches(layers)) + " (no limit)"},
		{"Mount Mode", mode},
	}
	if !d.kernel {
		pass := "on request; not known until a layer is mounted"
		if !d.passthrough {
			pass = "off (" + optPassthrough + "=false)"
		} else if b, err := os.ReadFile(filepath.Join(d.root, passthroughFile)); err == nil {
			pass = string(b)
		}
		status = append(status, [2]string{"FUSE Passthrough", pass}, [2]string{"FUSE Device", "/dev/fuse"})
	}
	return status
}

// maxBranches returns the most branches any layer mounts.
func (d *Driver) maxBranches(layers []os.DirEntry) int {
	most := 0
	for _, l := range layers {
		if b, err := os.ReadFile(d.layers(l.Name())); err == nil {
			most = max(most, strings.Count(string(b), "\n")+1)
		}
	}
	return most
}
