// Package unionfs is strata's union file system: aufs's semantics, served
// with FUSE, so that strata has a union driver where the aufs module is
// missing (everywhere but a few distribution kernels) and overlayfs is not
// wanted or allowed.
//
// A union is a list of branch directories, the top one first. With
// Writable, the top branch takes every change; the others are never
// written. On disk a branch is a plain directory in aufs's format, which is
// also the layer-tar format:
//
//	dir/.wh.<name>      hides name of the branches below (an empty file)
//	dir/.wh..wh..opq    hides everything the branches below have in dir
//	.wh..wh.orph/       at the root of the writable branch: copy-ups and new
//	                    directories being built, renamed into place once
//	                    complete, so a crash leaves halves only here (emptied
//	                    at the next mount)
//
// Names starting with .wh. never show in the union and cannot be created
// through it.
//
// It is built on go-fuse's fs package rather than its raw API: the fs
// package keeps the kernel's inode tree, lookup counts and forgets, and the
// backing ids of FUSE passthrough, so this package only decides where each
// name lives.
package unionfs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Options describe a union.
type Options struct {
	// Branches are directories, the top one first.
	Branches []string
	// Writable makes the top branch take the writes; otherwise the union
	// is read-only.
	Writable bool
	// Passthrough lets the kernel read and write the branch files of open
	// files directly (FUSE passthrough), where it allows it.
	Passthrough bool
	// Name is the source shown in /proc/mounts.
	Name string
	// Debug logs every FUSE request to stderr.
	Debug bool
}

// Union is a mounted union file system.
type Union struct {
	stack       Stack
	writable    bool
	passthrough bool
	server      *fuse.Server
	asRoot      bool // the server is the host's root: it sets owners, allows others in

	// mu orders changes of the branches: lookups, reads and opens for
	// reading share it, changes take it alone.
	mu sync.RWMutex

	served atomic.Int64 // reads served by the server, not passed through

	idMu    sync.Mutex
	ids     map[idKey]uint64
	nextIno atomic.Uint64
}

// idKey names a branch file for inode numbers: its device and inode, and
// its path when it is a lower file with several links (those are separate
// files in the union: a copy-up of one leaves the others as they were).
type idKey struct {
	dev, ino uint64
	path     string
}

// cacheTimeout is how long the kernel may trust names and attributes: the
// union is the only writer of its branches while it is mounted.
const cacheTimeout = time.Hour

// Mount mounts the union of opts at mountpoint and serves it until it is
// unmounted (Wait returns then).
func Mount(mountpoint string, opts Options) (*Union, error) {
	if len(opts.Branches) == 0 {
		return nil, errors.New("unionfs: no branches")
	}
	u := &Union{
		stack:    Stack{Branches: opts.Branches},
		writable: opts.Writable,
		ids:      map[idKey]uint64{},
		asRoot:   os.Geteuid() == 0 && hostRoot(),
	}
	u.nextIno.Store(1) // 1 is the root
	if u.writable {
		if err := u.resetWorkDir(); err != nil {
			return nil, err
		}
	}
	rootEntry, err := u.stack.root()
	if err != nil {
		return nil, err
	}
	root := &node{u: u, e: rootEntry}
	u.ids[idKey{dev: rootEntry.st.Dev, ino: rootEntry.st.Ino}] = 1

	timeout := cacheTimeout
	mo := fuse.MountOptions{
		FsName:        opts.Name,
		Name:          "strata-unionfs",
		DirectMount:   true,
		AllowOther:    u.asRoot,
		MaxStackDepth: 2, // branches may sit on an overlay
		Debug:         opts.Debug,
		Options:       []string{"default_permissions"},
	}
	if u.asRoot {
		mo.Options = append(mo.Options, "dev", "suid")
	}
	if !u.writable {
		mo.Options = append(mo.Options, "ro")
	}
	if !opts.Passthrough {
		mo.DisabledCapabilities |= fuse.CAP_PASSTHROUGH
	}
	server, err := fs.Mount(mountpoint, root, &fs.Options{
		MountOptions:    mo,
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		RootStableAttr:  &fs.StableAttr{Ino: 1},
	})
	if err != nil {
		return nil, fmt.Errorf("mount union at %s: %w", mountpoint, err)
	}
	u.server = server
	// Registering a backing file needs CAP_SYS_ADMIN; without it go-fuse
	// falls back to reads through the server.
	u.passthrough = opts.Passthrough && u.asRoot &&
		server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH != 0
	return u, nil
}

// Passthrough reports whether open files are read and written by the
// kernel directly.
func (u *Union) Passthrough() bool { return u.passthrough }

// Wait returns once the union is unmounted.
func (u *Union) Wait() { u.server.Wait() }

// Unmount unmounts the union.
func (u *Union) Unmount() error { return u.server.Unmount() }

// resetWorkDir empties the work directory of what a crash left.
func (u *Union) resetWorkDir() error {
	dir := u.workDir()
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Mkdir(dir, 0o700)
}

func (u *Union) workDir() string { return u.stack.Branches[0] + "/" + workDir }

// ino returns the inode number of the branch file st, found in branch at
// rel, allocating one the first time.
func (u *Union) ino(st *syscall.Stat_t, branch int, rel string) uint64 {
	key := u.key(st, branch, rel)
	u.idMu.Lock()
	defer u.idMu.Unlock()
	if ino, ok := u.ids[key]; ok {
		return ino
	}
	ino := u.nextIno.Add(1)
	u.ids[key] = ino
	return ino
}

func (u *Union) key(st *syscall.Stat_t, branch int, rel string) idKey {
	k := idKey{dev: st.Dev, ino: st.Ino}
	if st.Nlink > 1 && st.Mode&syscall.S_IFMT != syscall.S_IFDIR && (branch > 0 || !u.writable) {
		k.path = rel
	}
	return k
}

// keep makes the branch file st (at rel, in branch) answer to the inode
// number ino: after a copy-up, the file keeps its number.
func (u *Union) keep(st *syscall.Stat_t, branch int, rel string, ino uint64) {
	u.idMu.Lock()
	u.ids[u.key(st, branch, rel)] = ino
	u.idMu.Unlock()
}

// forget drops the number of a branch file that no longer exists, so that
// a new file reusing its inode is a new file in the union.
func (u *Union) forget(st *syscall.Stat_t, branch int, rel string) {
	u.idMu.Lock()
	delete(u.ids, u.key(st, branch, rel))
	u.idMu.Unlock()
}

// hostRoot reports whether this process is in the host's user namespace,
// where root may mount devices, let others in and use passthrough.
func hostRoot() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	return err == nil && strings.Join(strings.Fields(string(b)), " ") == "0 0 4294967295"
}
