package btrfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
)

// Quota groups: btrfs counts, per subvolume, the bytes it references and
// the bytes only it references (exclusive), and can cap the first. strata
// turns quota on only when a size limit is asked for, since the accounting
// slows every snapshot and deletion down.

// quotaCtlArgs is struct btrfs_ioctl_quota_ctl_args.
type quotaCtlArgs struct{ cmd, status uint64 }

// qgroupCreateArgs is struct btrfs_ioctl_qgroup_create_args.
type qgroupCreateArgs struct{ create, qgroupID uint64 }

// qgroupLimitArgs is struct btrfs_ioctl_qgroup_limit_args.
type qgroupLimitArgs struct {
	qgroupID                      uint64
	flags, maxRfer, maxExcl, _, _ uint64
}

const (
	quotaCtlEnable = 1      // BTRFS_QUOTA_CTL_ENABLE
	limitMaxRfer   = 1 << 0 // BTRFS_QGROUP_LIMIT_MAX_RFER

	statusOn           = 1 << 0 // BTRFS_QGROUP_STATUS_FLAG_ON
	statusRescan       = 1 << 1 // BTRFS_QGROUP_STATUS_FLAG_RESCAN
	statusInconsistent = 1 << 2 // BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT
)

// quotaState is what the quota tree says of the whole file system.
type quotaState struct {
	on bool
	// consistent is false while a rescan runs or after the kernel lost
	// track: the numbers cannot be trusted then.
	consistent bool
}

func (q quotaState) String() string {
	switch {
	case !q.on:
		return "off"
	case !q.consistent:
		return "on (numbers being rescanned)"
	}
	return "on"
}

// readQuotaState reads the qgroup status item; without a quota tree quota
// is off.
func readQuotaState(fd uintptr) (quotaState, error) {
	items, err := searchTree(fd, quotaTreeID, 0, qgroupStatusKey, 0, 0)
	if errors.Is(err, unix.ENOENT) {
		return quotaState{}, nil
	}
	if err != nil {
		return quotaState{}, err
	}
	if len(items) == 0 || len(items[0].data) < 24 {
		return quotaState{}, nil
	}
	// struct btrfs_qgroup_status_item: version, generation, flags, ...
	flags := binary.LittleEndian.Uint64(items[0].data[16:])
	return quotaState{
		on:         flags&statusOn != 0,
		consistent: flags&(statusRescan|statusInconsistent) == 0,
	}, nil
}

// enableQuota turns quota on for the file system holding dir; the kernel
// gives every existing subvolume its qgroup.
func enableQuota(dir string) error {
	return withDir(dir, func(fd uintptr) error {
		args := quotaCtlArgs{cmd: quotaCtlEnable}
		return os.NewSyscallError("btrfs quota enable", ioctl(fd, iocQuotaCtl, unsafe.Pointer(&args)))
	})
}

// limitSubvolume caps the bytes the subvolume at path references: what it
// shares with its parent plus what it writes, as the size of a container's
// root file system is understood by Docker.
func limitSubvolume(path string, bytes uint64) error {
	return withDir(path, func(fd uintptr) error {
		id, err := subvolumeID(fd)
		if err != nil {
			return err
		}
		limit := qgroupLimitArgs{qgroupID: id, flags: limitMaxRfer, maxRfer: bytes}
		err = ioctl(fd, iocQgroupLimit, unsafe.Pointer(&limit))
		if errors.Is(err, unix.ENOENT) { // made before quota was on, with no qgroup
			create := qgroupCreateArgs{create: 1, qgroupID: id}
			if err := ioctl(fd, iocQgroupCreate, unsafe.Pointer(&create)); err != nil {
				return os.NewSyscallError("btrfs qgroup create", err)
			}
			err = ioctl(fd, iocQgroupLimit, unsafe.Pointer(&limit))
		}
		return os.NewSyscallError("btrfs qgroup limit", err)
	})
}

// qgroupUsage returns the bytes the subvolume id references and the bytes
// only it references, as of the last transaction commit.
func qgroupUsage(fd uintptr, id uint64) (referenced, exclusive uint64, err error) {
	items, err := searchTree(fd, quotaTreeID, 0, qgroupInfoKey, id, id)
	if err != nil {
		return 0, 0, err
	}
	if len(items) == 0 || len(items[0].data) < 32 {
		return 0, 0, fmt.Errorf("qgroup 0/%d: %w", id, errdefs.ErrNotFound)
	}
	// struct btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, ...
	d := items[0].data
	return binary.LittleEndian.Uint64(d[8:]), binary.LittleEndian.Uint64(d[24:]), nil
}

// parseSize reads a size such as 512M, 10G, 10GB or 1073741824 (bytes);
// units are powers of 1024, as Docker reads --storage-opt size.
func parseSize(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "b"), "i")
	shift := 0
	if n := len(t); n > 0 {
		if i := strings.IndexByte("kmgtp", t[n-1]); i >= 0 {
			shift, t = 10*(i+1), t[:n-1]
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || !(n > 0) || n*float64(uint64(1)<<shift) >= 1<<63 {
		return 0, fmt.Errorf("size %q: want a positive size such as 512M or 10G: %w", s, errdefs.ErrInvalid)
	}
	return uint64(n * float64(uint64(1)<<shift)), nil
}
