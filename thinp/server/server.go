// Package server serves the thin devices of a thinp pool as block devices.
//
// The kernels strata runs on may have no device-mapper, so a server process
// plays dm-thin's part: it holds the pool files, exposes each active thin
// device as a file of a FUSE mount (direct I/O, parallel direct writes) and
// attaches a loop device (direct I/O) to that file. A flush of the loop
// device arrives as FSYNC and commits the pool; a discard arrives as a
// hole punch and unmaps blocks. Other processes talk to the server through
// a control socket (Client); the first request starts it, and it exits as
// soon as no device is active, so a pool without active devices has no
// process.
//
// The pool directory:
//
//	metadata       dm-thin metadata (package thinp; and metadata.sizes)
//	data           data blocks (package thinp)
//	lock           flocked by the server for its life: one server per pool
//	control.sock   the control socket: one JSON request and reply per connection
//	dev/           the FUSE mount: one file per active device, named by its id
//	server.log     the server's stderr (start-up and shut-down failures only)
//	metadata.check a committed copy of the metadata, while a check runs
//
// The server is in the I/O path of every file system on its devices, so it
// never writes to files that could live on them (its log is in the pool
// directory, which cannot) and it freezes a mounted file system before
// snapshotting its device, as dm's suspend does.
package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/internal/reexec"
	"github.com/strata-storage/strata/thinp"
)

// Files of the pool directory.
const (
	MetadataFile = "metadata"
	DataFile     = "data"
	lockFile     = "lock"
	socketFile   = "control.sock"
	devDir       = "dev"
	logFile      = "server.log"
	checkFile    = "metadata.check"
)

const entryPoint = "strata-thin-server"

func init() { reexec.Register(entryPoint, serverMain) }

// server is the state of the one server process of a pool.
type server struct {
	dir  string
	lock *os.File
	pool *thinp.Pool
	fs   *devFS
	ln   *net.UnixListener

	// commits is held shared by every commit the kernel asks for (FSYNC)
	// and exclusively while the metadata is copied for a check, so that the
	// copy is one committed transaction.
	commits sync.RWMutex

	active map[uint32]*device // only the control loop touches it
	stop   bool
}

// serverMain is the server process: its argument is the pool directory; it
// reports on file 3 "ready", "busy" (another server holds the pool) or the
// error that kept it from starting.
func serverMain() int {
	ready := os.NewFile(3, "ready")
	if len(os.Args) != 2 {
		fmt.Fprintln(ready, "usage: strata-thin-server POOLDIR")
		return 2
	}
	s, err := start(os.Args[1])
	if errors.Is(err, errBusy) {
		fmt.Fprintln(ready, "busy")
		return 0
	}
	if err != nil {
		fmt.Fprintln(ready, errdefs.Message(err))
		return 1
	}
	fmt.Fprintln(ready, "ready")
	ready.Close()
	if err := s.serve(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s: %v\n", time.Now().Format(time.RFC3339), s.dir, err)
		return 1
	}
	return 0
}

var errBusy = errors.New("another server holds the pool")

// start takes the pool's lock, opens the pool, mounts the device file
// system and listens on the control socket.
func start(dir string) (s *server, err error) {
	if err := os.Chdir("/"); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errBusy
		}
		return nil, err
	}
	s = &server{dir: dir, lock: lock, active: map[uint32]*device{}}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.pool, err = thinp.Open(filepath.Join(dir, MetadataFile), filepath.Join(dir, DataFile)); err != nil {
		return nil, err
	}
	if s.fs, err = mountDevFS(filepath.Join(dir, devDir), s); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, socketFile)
	os.Remove(sock) // left by a server that died: we hold the lock
	if s.ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"}); err != nil {
		return nil, err
	}
	s.ln.SetUnlinkOnClose(true)
	return s, nil
}

// serve answers requests one at a time until no device is active.
func (s *server) serve() error {
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			return errors.Join(err, s.close())
		}
		s.answer(conn)
		if s.stop || len(s.active) == 0 {
			return s.close()
		}
	}
}

func (s *server) answer(conn *net.UnixConn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	var req request
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		return
	}
	// The work is done even if the client is gone: it could not be undone.
	conn.SetDeadline(time.Time{})
	json.NewEncoder(conn).Encode(s.handle(&req))
}

// close gives everything back: devices (when stopping), the socket, the
// FUSE mount, the pool (which commits) and the lock.
func (s *server) close() error {
	var errs []error
	if s.ln != nil {
		errs = append(errs, s.ln.Close())
	}
	for id := range s.active {
		errs = append(errs, s.deactivate(id))
	}
	if s.fs != nil {
		errs = append(errs, s.fs.unmount())
	}
	if s.pool != nil {
		errs = append(errs, s.pool.Close())
	}
	errs = append(errs, s.lock.Close())
	return errors.Join(errs...)
}

func (s *server) handle(req *request) *reply {
	var rep reply
	var err error
	switch req.Op {
	case opCreate:
		err = s.commitAfter(s.pool.CreateThin(req.ID, req.Size))
	case opSnap:
		err = s.snapshot(req.ID, req.Origin)
	case opDelete:
		err = s.delete(req.ID)
	case opActivate:
		rep.Path, err = s.activate(req.ID)
	case opDeactivate:
		err = s.deactivate(req.ID)
	case opStatus:
		rep.Status, rep.Active = s.status()
		rep.Pid = os.Getpid()
	case opGrow:
		err = s.grow(req.DataSize, req.MetadataSize)
	case opCheckCopy:
		rep.Path, err = s.checkCopy()
	case opStop:
		err = s.stopAll()
	default:
		err = fmt.Errorf("%w: unknown request %q", errdefs.ErrInvalid, req.Op)
	}
	if err != nil {
		rep.Error, rep.Kind = errdefs.Message(err), kindOf(err)
	}
	return &rep
}

func (s *server) commitAfter(err error) error {
	if err != nil {
		return err
	}
	return s.commit()
}

func (s *server) commit() error {
	s.commits.RLock()
	defer s.commits.RUnlock()
	return s.pool.Commit()
}

// snapshot makes id a snapshot of origin. An active origin's file system is
// frozen around it, so that the snapshot holds what it has written.
func (s *server) snapshot(id, origin uint32) error {
	if d := s.active[origin]; d != nil {
		thaw, err := freeze(d.loopPath)
		if err != nil {
			return fmt.Errorf("snapshot of device %d: %w", origin, err)
		}
		defer thaw()
	}
	return s.commitAfter(s.pool.CreateSnap(id, origin))
}

func (s *server) delete(id uint32) error {
	if d := s.active[id]; d != nil {
		return fmt.Errorf("device %d is active on %s: %w", id, d.loopPath, errdefs.ErrInUse)
	}
	return s.commitAfter(s.pool.Delete(id))
}

func (s *server) status() (thinp.Status, map[uint32]string) {
	active := make(map[uint32]string, len(s.active))
	for id, d := range s.active {
		active[id] = d.loopPath
	}
	return s.pool.Status(), active
}

func (s *server) grow(data, meta int64) error {
	if data > 0 {
		if err := s.pool.GrowData(data); err != nil {
			return err
		}
	}
	if meta > 0 {
		if err := s.pool.GrowMetadata(meta); err != nil {
			return err
		}
	}
	return s.commit()
}

// stopAll deactivates every device, or none if one is in use.
func (s *server) stopAll() error {
	ids := make([]uint32, 0, len(s.active))
	for id := range s.active {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		if err := s.active[id].checkUnused(); err != nil {
			return fmt.Errorf("device %d: %w", id, err)
		}
	}
	for _, id := range ids {
		if err := s.deactivate(id); err != nil {
			return err
		}
	}
	s.stop = true
	return nil
}

// checkCopy commits and copies the metadata, holding off other commits so
// that the copy is exactly the committed transaction.
func (s *server) checkCopy() (string, error) {
	s.commits.Lock()
	defer s.commits.Unlock()
	if err := s.pool.Commit(); err != nil {
		return "", err
	}
	dst := filepath.Join(s.dir, checkFile)
	if err := copySparse(filepath.Join(s.dir, MetadataFile), dst); err != nil {
		return "", err
	}
	return dst, nil
}
