package btrfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The btrfs ioctls strata uses, from the kernel's uapi linux/btrfs.h:
// _IOW/_IOR/_IOWR(0x94, nr, size).
const (
	iocSubvolCreate   = 0x5000940e // struct btrfs_ioctl_vol_args
	iocSnapCreateV2   = 0x50009417 // struct btrfs_ioctl_vol_args_v2
	iocSnapDestroy    = 0x5000940f // struct btrfs_ioctl_vol_args
	iocSubvolGetflags = 0x80089419 // __u64
	iocSubvolSetflags = 0x4008941a // __u64
	iocTreeSearch     = 0xd0009411 // struct btrfs_ioctl_search_args
	iocInoLookup      = 0xd0009412 // struct btrfs_ioctl_ino_lookup_args
	iocQuotaCtl       = 0xc0109428 // struct btrfs_ioctl_quota_ctl_args
	iocQgroupCreate   = 0x4010942a // struct btrfs_ioctl_qgroup_create_args
	iocQgroupLimit    = 0x8030942b // struct btrfs_ioctl_qgroup_limit_args

	subvolReadOnly = 1 << 1 // BTRFS_SUBVOL_RDONLY

	firstFreeObjectID = 256 // BTRFS_FIRST_FREE_OBJECTID: a subvolume's root directory
	rootTreeID        = 1   // BTRFS_ROOT_TREE_OBJECTID
	quotaTreeID       = 8   // BTRFS_QUOTA_TREE_OBJECTID
	rootRefKey        = 156 // BTRFS_ROOT_REF_KEY: parent subvolume -> child
	qgroupStatusKey   = 240 // BTRFS_QGROUP_STATUS_KEY
	qgroupInfoKey     = 242 // BTRFS_QGROUP_INFO_KEY
)

// volArgs is struct btrfs_ioctl_vol_args.
type volArgs struct {
	fd   int64
	name [4088]byte
}

// volArgsV2 is struct btrfs_ioctl_vol_args_v2 (the qgroup_inherit union
// left zero).
type volArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64
	name    [4040]byte
}

// searchKey is struct btrfs_ioctl_search_key; searchArgs is the whole
// struct btrfs_ioctl_search_args of one page.
type searchKey struct {
	treeID                 uint64
	minObjectID, maxObject uint64
	minOffset, maxOffset   uint64
	minTransid, maxTransid uint64
	minType, maxType       uint32
	nrItems                uint32
	_                      uint32
	_                      [4]uint64
}

type searchArgs struct {
	key searchKey
	buf [4096 - 104]byte
}

// inoLookupArgs is struct btrfs_ioctl_ino_lookup_args.
type inoLookupArgs struct {
	treeID   uint64
	objectID uint64
	name     [4080]byte
}

func ioctl(fd uintptr, req uintptr, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

// withDir runs fn on an open directory.
func withDir(dir string, fn func(fd uintptr) error) error {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return fn(f.Fd())
}

func setName(dst []byte, name string) error {
	if len(name) >= len(dst) || name == "" {
		return fmt.Errorf("subvolume name %q: %w", name, unix.ENAMETOOLONG)
	}
	copy(dst, name)
	return nil
}

// createSubvolume makes an empty subvolume at path.
func createSubvolume(path string) error {
	var args volArgs
	if err := setName(args.name[:], filepath.Base(path)); err != nil {
		return err
	}
	return withDir(filepath.Dir(path), func(fd uintptr) error {
		return os.NewSyscallError("btrfs subvolume create "+path, ioctl(fd, iocSubvolCreate, unsafe.Pointer(&args)))
	})
}

// snapshotSubvolume makes path a snapshot of the subvolume src.
func snapshotSubvolume(src, path string, readOnly bool) error {
	s, err := os.OpenFile(src, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer s.Close()
	args := volArgsV2{fd: int64(s.Fd())}
	if readOnly {
		args.flags = subvolReadOnly
	}
	if err := setName(args.name[:], filepath.Base(path)); err != nil {
		return err
	}
	return withDir(filepath.Dir(path), func(fd uintptr) error {
		return os.NewSyscallError("btrfs snapshot "+src+" "+path, ioctl(fd, iocSnapCreateV2, unsafe.Pointer(&args)))
	})
}

// destroySubvolume deletes the subvolume at path, which must hold no other.
func destroySubvolume(path string) error {
	var args volArgs
	if err := setName(args.name[:], filepath.Base(path)); err != nil {
		return err
	}
	return withDir(filepath.Dir(path), func(fd uintptr) error {
		return os.NewSyscallError("btrfs subvolume delete "+path, ioctl(fd, iocSnapDestroy, unsafe.Pointer(&args)))
	})
}

// setReadOnly turns the read-only flag of the subvolume at path on or off.
func setReadOnly(path string, readOnly bool) error {
	return withDir(path, func(fd uintptr) error {
		var flags uint64
		if err := ioctl(fd, iocSubvolGetflags, unsafe.Pointer(&flags)); err != nil {
			return os.NewSyscallError("btrfs subvolume get flags "+path, err)
		}
		want := flags &^ subvolReadOnly
		if readOnly {
			want |= subvolReadOnly
		}
		if want == flags {
			return nil
		}
		return os.NewSyscallError("btrfs subvolume set flags "+path, ioctl(fd, iocSubvolSetflags, unsafe.Pointer(&want)))
	})
}

// readOnly reports whether the subvolume at path is read-only.
func readOnly(path string) (bool, error) {
	var flags uint64
	err := withDir(path, func(fd uintptr) error {
		return os.NewSyscallError("btrfs subvolume get flags "+path, ioctl(fd, iocSubvolGetflags, unsafe.Pointer(&flags)))
	})
	return flags&subvolReadOnly != 0, err
}

// subvolumeID returns the id of the subvolume holding the directory fd.
func subvolumeID(fd uintptr) (uint64, error) {
	args := inoLookupArgs{objectID: firstFreeObjectID} // tree 0: fd's own
	if err := ioctl(fd, iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return 0, os.NewSyscallError("btrfs ino lookup", err)
	}
	return args.treeID, nil
}

// dirPath returns the path of directory dirID inside subvolume tree, ""
// for its root, else relative with a trailing slash.
func dirPath(fd uintptr, tree, dirID uint64) (string, error) {
	args := inoLookupArgs{treeID: tree, objectID: dirID}
	if err := ioctl(fd, iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return "", os.NewSyscallError("btrfs ino lookup", err)
	}
	return unix.ByteSliceToString(args.name[:]), nil
}

// item is one result of a tree search.
type item struct {
	objectID, offset uint64
	typ              uint32
	data             []byte
}

// searchTree returns the items of tree whose keys lie between
// (objectID, typ, minOffset) and (objectID, typ, maxOffset), over as many
// calls as it takes.
func searchTree(fd uintptr, tree, objectID uint64, typ uint32, minOffset, maxOffset uint64) ([]item, error) {
	var items []item
	args := searchArgs{key: searchKey{
		treeID:      tree,
		minObjectID: objectID, maxObject: objectID,
		minType: typ, maxType: typ,
		minOffset: minOffset, maxOffset: maxOffset,
		maxTransid: ^uint64(0),
	}}
	for {
		args.key.nrItems = 4096
		if err := ioctl(fd, iocTreeSearch, unsafe.Pointer(&args)); err != nil {
			return nil, os.NewSyscallError("btrfs tree search", err)
		}
		n := args.key.nrItems
		if n == 0 {
			return items, nil
		}
		buf := args.buf[:]
		var last uint64
		for range n {
			if len(buf) < 32 {
				return nil, errors.New("btrfs tree search: short result")
			}
			h := item{
				objectID: binary.LittleEndian.Uint64(buf[8:]),
				offset:   binary.LittleEndian.Uint64(buf[16:]),
				typ:      binary.LittleEndian.Uint32(buf[24:]),
			}
			size := int(binary.LittleEndian.Uint32(buf[28:]))
			if len(buf) < 32+size {
				return nil, errors.New("btrfs tree search: short item")
			}
			h.data = append([]byte(nil), buf[32:32+size]...)
			buf = buf[32+size:]
			last = h.offset
			if h.objectID == objectID && h.typ == typ {
				items = append(items, h)
			}
		}
		if last == maxOffset {
			return items, nil
		}
		args.key.minOffset = last + 1
	}
}

// nestedSubvolume is a subvolume made inside another one.
type nestedSubvolume struct {
	id   uint64
	path string // relative to the parent subvolume's root
}

// nestedSubvolumes lists the subvolumes created directly inside the
// subvolume open as fd, whose id is id, from the root tree's back
// references: no walk of the files.
func nestedSubvolumes(fd uintptr, id uint64) ([]nestedSubvolume, error) {
	refs, err := searchTree(fd, rootTreeID, id, rootRefKey, 0, ^uint64(0))
	if err != nil {
		return nil, err
	}
	var nested []nestedSubvolume
	for _, ref := range refs {
		// struct btrfs_root_ref: dirid, sequence, name_len, then the name.
		if len(ref.data) < 18 {
			return nil, errors.New("btrfs root ref: short item")
		}
		dirID := binary.LittleEndian.Uint64(ref.data)
		nameLen := int(binary.LittleEndian.Uint16(ref.data[16:]))
		if len(ref.data) < 18+nameLen {
			return nil, errors.New("btrfs root ref: short name")
		}
		dir, err := dirPath(fd, id, dirID)
		if err != nil {
			return nil, err
		}
		nested = append(nested, nestedSubvolume{id: ref.offset, path: dir + string(ref.data[18:18+nameLen])})
	}
	return nested, nil
}

// destroyTree deletes the subvolume at path and every subvolume created
// inside it, deepest first: btrfs refuses to delete a subvolume that holds
// another. A read-only one holding others is made writable first, since
// deleting them removes entries from it.
func destroyTree(path string) error {
	var nested []nestedSubvolume
	err := withDir(path, func(fd uintptr) error {
		id, err := subvolumeID(fd)
		if err == nil {
			nested, err = nestedSubvolumes(fd, id)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("subvolumes inside %s: %w", path, err)
	}
	if len(nested) > 0 {
		if err := setReadOnly(path, false); err != nil {
			return err
		}
	}
	for _, n := range nested {
		if err := destroyTree(filepath.Join(path, n.path)); err != nil {
			return err
		}
	}
	return destroySubvolume(path)
}
