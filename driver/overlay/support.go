package overlay

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
	"golang.org/x/sys/unix"
)

// supportedMarker in the driver root records that the probes passed once,
// so later starts skip the probe mount.
const supportedMarker = ".supported"

// checkSupport fails with errdefs.ErrNotSupported unless overlay layers
// work in root: the kernel knows overlay, the backing file system is not an
// overlay itself, reports file types in readdir (d_type), and a probe
// overlay with two lowers and an upper mounts.
func checkSupport(root string) error {
	if _, err := os.Stat(filepath.Join(root, supportedMarker)); err == nil {
		return nil
	}
	if err := kernelHasOverlay(); err != nil {
		return err
	}
	if fsName := driver.BackingFS(root); fsName == "overlayfs" {
		return fmt.Errorf("overlay on %s: the backing file system is itself an overlay: %w", root, errdefs.ErrNotSupported)
	}
	probe, err := os.MkdirTemp(root, ".probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(probe)
	if err := checkDType(probe); err != nil {
		return err
	}
	if err := probeMount(probe); err != nil {
		return err
	}
	err = driver.SyncWriteFile(filepath.Join(root, supportedMarker), nil)
	if errors.Is(err, fs.ErrExist) {
		return nil // another process probed at the same time
	}
	return err
}

func kernelHasOverlay() error {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return fmt.Errorf("overlay: %w: %w", err, errdefs.ErrNotSupported)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 0 && fields[len(fields)-1] == "overlay" {
			return nil
		}
	}
	return fmt.Errorf("overlay is not in /proc/filesystems (modprobe overlay?): %w", errdefs.ErrNotSupported)
}

// checkDType fails when readdir in dir returns DT_UNKNOWN (xfs with
// ftype=0): overlay then cannot tell whiteouts from files.
func checkDType(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "f"), nil, 0o600); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 4096)
	n, err := unix.ReadDirent(int(f.Fd()), buf)
	if err != nil {
		return &os.PathError{Op: "getdents", Path: dir, Err: err}
	}
	// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
	for b := buf[:n]; len(b) >= 19; {
		reclen := int(binary.NativeEndian.Uint16(b[16:18]))
		if reclen == 0 || reclen > len(b) {
			break
		}
		if b[18] == unix.DT_UNKNOWN {
			return fmt.Errorf("overlay on %s: the backing file system does not report file types (d_type): %w",
				dir, errdefs.ErrNotSupported)
		}
		b = b[reclen:]
	}
	return nil
}

func probeMount(dir string) error {
	for _, sub := range []string{"lower1", "lower2", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}
	merged := filepath.Join(dir, "merged")
	err := mountOverlay(dir, merged,
		[]string{filepath.Join(dir, "lower1"), filepath.Join(dir, "lower2")},
		filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	if err != nil {
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotSupported)
	}
	return unmount(merged)
}
