package btrfs

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Status reports what `strata info` shows: how the driver talks to btrfs,
// the kernel, the file system's space, quota, and with quota on the bytes
// the layers hold, from the qgroups rather than a walk of the files.
func (d *Driver) Status() [][2]string {
	status := [][2]string{
		{"Backing Filesystem", "btrfs"},
		{"Build", "native ioctls (no cgo, no btrfs-progs)"},
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		status = append(status, [2]string{"Kernel", unix.ByteSliceToString(uts.Release[:])})
	}
	var st unix.Statfs_t
	if unix.Statfs(d.root, &st) == nil {
		status = append(status,
			[2]string{"Filesystem Size", humanBytes(st.Blocks * uint64(st.Bsize))},
			[2]string{"Filesystem Free", humanBytes(st.Bavail * uint64(st.Bsize))})
	}
	entries, _ := os.ReadDir(filepath.Join(d.root, "subvolumes"))
	status = append(status, [2]string{"Subvolumes", strconv.Itoa(len(entries))})
	if d.defaultSize > 0 {
		status = append(status, [2]string{"Default Size Limit", humanBytes(d.defaultSize)})
	}
	withDir(d.root, func(fd uintptr) error {
		state, err := readQuotaState(fd)
		if err != nil {
			status = append(status, [2]string{"Quota", "unknown: " + err.Error()})
			return nil
		}
		status = append(status, [2]string{"Quota", state.String()})
		if state.on && state.consistent {
			status = append(status, [2]string{"Layers Exclusive", humanBytes(d.exclusiveTotal(entries))})
		}
		return nil
	})
	return status
}

// exclusiveTotal adds up the bytes only one layer references, over the
// layers of entries.
func (d *Driver) exclusiveTotal(entries []os.DirEntry) uint64 {
	var total uint64
	for _, e := range entries {
		withDir(d.dir(e.Name()), func(fd uintptr) error {
			subvol, err := subvolumeID(fd)
			if err != nil {
				return err
			}
			_, exclusive, err := qgroupUsage(fd, subvol)
			total += exclusive
			return err
		})
	}
	return total
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
