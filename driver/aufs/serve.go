package aufs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/internal/reexec"
	"github.com/strata-storage/strata/unionfs"
	"golang.org/x/sys/unix"
)

// serveEntry is the entry point of the mount server: the same executable,
// started again (internal/reexec), in a session of its own so that it
// outlives the command that mounted the layer. Unmounting ends it.
const serveEntry = "strata-aufs-serve"

const readyLine = "ready"

func init() {
	reexec.Register(serveEntry, serve)
}

// layer is what mounting needs to know of a layer on disk.
type layer struct {
	branches []string // diff dirs, the layer's own first
	rw       bool
}

func (d *Driver) load(id string) (layer, error) {
	parents, err := d.parents(id)
	if err != nil {
		return layer{}, err
	}
	l := layer{branches: []string{d.diff(id)}}
	for _, p := range parents {
		l.branches = append(l.branches, d.diff(p))
	}
	_, err = os.Stat(filepath.Join(d.meta(id), "rw"))
	l.rw = err == nil
	return l, nil
}

// Get returns the diff dir of a base layer, which needs no mount but is
// still counted, and otherwise mounts the layer's union at mnt/<id>:
// read-write layers with their diff dir as the writable branch. A union
// whose server was killed is mounted again.
func (d *Driver) Get(id, mountLabel string) (string, error) {
	path, mount, err := d.mounter(id)
	if err != nil {
		return "", err
	}
	if err := d.mounts.Acquire(id, func() error { return d.serveLocked(id, mount) }); err != nil {
		return "", fmt.Errorf("get layer %s: %w", id, err)
	}
	if err := d.revive(id, path, mount); err != nil {
		d.Put(id)
		return "", fmt.Errorf("get layer %s: %w", id, err)
	}
	return path, nil
}

func (d *Driver) Put(id string) error {
	return d.mounts.Release(id, func() error { return d.unmount(id) })
}

// Pin mounts the layer as Get does, for a reference that outlives this
// process: the server does not depend on it.
func (d *Driver) Pin(id, mountLabel string) (string, error) {
	path, mount, err := d.mounter(id)
	if err != nil {
		return "", err
	}
	if err := d.mounts.Pin(id, func() error { return d.serveLocked(id, mount) }); err != nil {
		return "", fmt.Errorf("pin layer %s: %w", id, err)
	}
	if err := d.revive(id, path, mount); err != nil {
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

// Cleanup releases this process's Get references, unmounting what no
// other process or pin holds, and releases the root.
func (d *Driver) Cleanup() error {
	return d.held.Close(d.unmount)
}

// mounter returns the root path of layer id and the func that mounts it
// there, replacing whatever a dead holder left mounted; call it holding
// serveLocked.
func (d *Driver) mounter(id string) (string, func() error, error) {
	l, err := d.load(id)
	if err != nil {
		return "", nil, err
	}
	if len(l.branches) == 1 {
		return l.branches[0], func() error { return nil }, nil
	}
	target := d.mnt(id)
	return target, func() error {
		if err := unmount(target); err != nil {
			return err
		}
		if d.kernel {
			return mountKernel(target, l.branches, l.rw)
		}
		return d.startServer(target, l)
	}, nil
}

// unmount unmounts layer id's union, if it has one; its server then ends.
func (d *Driver) unmount(id string) error {
	if _, err := os.Stat(d.meta(id)); err != nil {
		return nil // removed already
	}
	return d.serveLocked(id, func() error { return unmount(d.mnt(id)) })
}

// revive mounts the union at path again if its server died (the mount
// then fails every request), while this process holds a reference on it.
func (d *Driver) revive(id, path string, mount func() error) error {
	if path != d.mnt(id) || !isDead(path) {
		return nil
	}
	return d.serveLocked(id, func() error {
		if !isDead(path) {
			return nil // another process revived it
		}
		return mount()
	})
}

// isDead reports whether the union at path lost its server: the kernel
// then fails requests with ENOTCONN, or ECONNABORTED once it aborted the
// connection. statfs always reaches the server; attributes may come from
// the kernel's cache.
func isDead(path string) bool {
	var st unix.Statfs_t
	err := unix.Statfs(path, &st)
	return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED)
}

// serveLocked runs fn holding meta/<id>/serve.lock, which orders the
// mounts, unmounts and revivals of one layer between processes.
func (d *Driver) serveLocked(id string, fn func() error) error {
	f, err := os.OpenFile(filepath.Join(d.meta(id), "serve.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	return fn()
}

// startServer starts the mount server of the union l at target and waits
// until it has mounted (or failed to).
func (d *Driver) startServer(target string, l layer) error {
	args := []string{"ro", fmt.Sprint(d.passthrough), target}
	if l.rw {
		args[0] = "rw"
	}
	cmd := reexec.Command(serveEntry, append(args, l.branches...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the mount server of %s: %w", target, err)
	}
	go cmd.Wait() // reaps the server if it ends while this process lives
	line, err := bufio.NewReader(out).ReadString('\n')
	out.Close()
	status, ok := strings.CutPrefix(strings.TrimSpace(line), readyLine+" ")
	if !ok {
		if err == nil {
			err = errors.New(strings.TrimSpace(line))
		}
		return fmt.Errorf("mount union at %s: %w", target, err)
	}
	// For Status; a failed write only leaves it stale.
	os.WriteFile(filepath.Join(d.root, passthroughFile), []byte(status), 0o600)
	return nil
}

// serve is the mount server: args are the mode (rw or ro), whether to use
// passthrough, the mount point and the branches, top first. It says ready
// on stdout once mounted, then serves until the union is unmounted or it
// is told to stop.
func serve() int {
	args := os.Args[1:]
	if len(args) < 4 {
		fmt.Println("usage: mode passthrough target branch...")
		return 2
	}
	syscall.Umask(0) // the kernel applied the caller's umask already
	u, err := unionfs.Mount(args[2], unionfs.Options{
		Branches:    args[3:],
		Writable:    args[0] == "rw",
		Passthrough: args[1] == "true",
		Name:        "strata-aufs",
	})
	if err != nil {
		fmt.Println(strings.ReplaceAll(err.Error(), "\n", " "))
		return 1
	}
	pass := "off: reads and writes go through the server"
	if u.Passthrough() {
		pass = "on: the kernel reads and writes branch files directly"
	}
	fmt.Println(readyLine + " " + pass)
	os.Stdout.Close()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		u.Unmount()
	}()
	u.Wait()
	return 0
}

// unmount detaches the mount at target; a target that is not mounted is
// not an error, so callers can unmount whatever a crash left. A busy
// mount is detached lazily: it goes once its last user does.
func unmount(target string) error {
	err := unix.Unmount(target, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(target, unix.MNT_DETACH)
	}
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return &os.PathError{Op: "unmount", Path: target, Err: err}
}

// unmountStale unmounts every mount under mnt/ of a layer no live holder
// accounts for (dead servers' too): only for a root no other process
// uses, once dead holders are gone.
func (d *Driver) unmountStale() error {
	prefix := filepath.Join(d.root, "mnt") + "/"
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !strings.HasPrefix(m.Mountpoint, prefix), false
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		id := strings.TrimPrefix(m.Mountpoint, prefix)
		if d.Exists(id) {
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
