package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
)

// device is an active thin device: its file in the FUSE mount and the loop
// device attached to it. The server keeps the loop device open, and the
// loop device clears itself (LO_FLAGS_AUTOCLEAR) when its last user is
// gone: at deactivation, or when a server that died is no longer needed by
// the file system mounted on it.
type device struct {
	loop     *os.File
	loopPath string
}

// activate attaches a loop device to device id's file and returns the loop
// device's path; an active device's path is returned as it is.
func (s *server) activate(id uint32) (string, error) {
	if d := s.active[id]; d != nil {
		return d.loopPath, nil
	}
	size, err := s.pool.DeviceSize(id)
	if err != nil {
		return "", err
	}
	s.fs.add(id, &devFile{pool: s.pool, s: s, id: id, size: size})
	d, err := attachLoop(s.fs.path(id))
	if err != nil {
		s.fs.remove(id)
		return "", fmt.Errorf("activate device %d: %w", id, err)
	}
	s.active[id] = d
	return d.loopPath, nil
}

// deactivate detaches the loop device, refusing while it is in use (a file
// system mounted on it), commits, and removes the device's file.
func (s *server) deactivate(id uint32) error {
	d := s.active[id]
	if d == nil {
		return fmt.Errorf("device %d is not active: %w", id, errdefs.ErrNotFound)
	}
	if err := d.checkUnused(); err != nil {
		return fmt.Errorf("device %d: %w", id, err)
	}
	if err := unix.IoctlSetInt(int(d.loop.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", d.loopPath, err)
	}
	limitDirty(d.loopPath, false)
	d.loop.Close()
	delete(s.active, id)
	s.fs.remove(id)
	return s.commit()
}

// checkUnused fails with ErrInUse when another opener holds the loop device
// exclusively, as a mounted file system does. A holder that is letting go
// is given a few seconds: a file system unmounted a moment ago that a mount
// namespace made meanwhile still holds (a copy of the mount), or whose
// writeback a loaded machine is still finishing.
func (d *device) checkUnused() error {
	deadline := time.Now().Add(5 * time.Second)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		f, err := os.OpenFile(d.loopPath, os.O_RDONLY|unix.O_EXCL, 0)
		if err == nil {
			return f.Close()
		}
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is in use (mounted?): %w", d.loopPath, errdefs.ErrInUse)
		}
		time.Sleep(wait)
	}
}

// attachLoop attaches a free loop device to file with direct I/O.
func attachLoop(file string) (*device, error) {
	backing, err := os.OpenFile(file, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	defer backing.Close() // the loop device holds its own reference
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	for range 16 { // another process may take the free device first
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("find a free loop device: %w", err)
		}
		path := fmt.Sprintf("/dev/loop%d", n)
		loop, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO | unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:], file)
		err = unix.IoctlLoopConfigure(int(loop.Fd()), &cfg)
		if err == nil {
			limitDirty(path, true)
			// Requests of the largest FUSE write, not 1280 KiB ones that
			// FUSE would split in two (best effort: a smaller limit
			// only costs requests).
			os.WriteFile(filepath.Join("/sys/block", filepath.Base(path), "queue/max_sectors_kb"), []byte(strconv.Itoa(maxWrite>>10)), 0)
			return &device{loop: loop, loopPath: path}, nil
		}
		loop.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("configure %s: %w", path, err)
		}
	}
	return nil, errors.New("no free loop device")
}

// dirtyLimit bounds the dirty page cache of a file system on an active
// device. Past half of it the kernel writes back in the background, while
// the writer goes on: a layer being applied is written through the pool as
// it is extracted, not all at once by the sync that ends it, which the
// global thresholds (a tenth of memory) would leave it to.
const dirtyLimit = 64 << 20

// limitDirty gives the loop device at path its own dirty limit
// (dirtyLimit, strict: not lent from other devices), or the kernel's
// defaults back before the loop device goes to another user. Kernels
// before 6.2 have no such settings: it does nothing there.
func limitDirty(path string, on bool) {
	bdi := filepath.Join("/sys/block", filepath.Base(path), "bdi")
	if on {
		os.WriteFile(filepath.Join(bdi, "max_bytes"), []byte(strconv.Itoa(dirtyLimit)), 0)
		os.WriteFile(filepath.Join(bdi, "strict_limit"), []byte("1"), 0)
		return
	}
	os.WriteFile(filepath.Join(bdi, "strict_limit"), []byte("0"), 0)
	os.WriteFile(filepath.Join(bdi, "max_ratio"), []byte("100"), 0)
}

// FIFREEZE and FITHAW are _IOWR('X', 119 and 120, int).
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// freeze freezes the file system mounted on the block device, if any, and
// returns the function that thaws it.
func freeze(dev string) (thaw func(), err error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil, err
	}
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return uint64(unix.Mkdev(uint32(m.Major), uint32(m.Minor))) != st.Rdev, false
	})
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		dir, err := os.Open(m.Mountpoint)
		if err != nil {
			continue
		}
		// The mount may have gone since mountinfo was read: never freeze
		// the file system underneath.
		var dst unix.Stat_t
		if unix.Fstat(int(dir.Fd()), &dst) != nil || dst.Dev != st.Rdev {
			dir.Close()
			continue
		}
		if err := unix.IoctlSetInt(int(dir.Fd()), fiFreeze, 0); err != nil {
			dir.Close()
			return nil, fmt.Errorf("freeze %s: %w", m.Mountpoint, err)
		}
		return func() {
			unix.IoctlSetInt(int(dir.Fd()), fiThaw, 0)
			dir.Close()
		}, nil
	}
	return func() {}, nil
}
