// Package server serves the thin devices of a thinp pool as block devices.
//
// The kernels strata runs on may have no device-mapper, so a server process
// plays dm-thin's part: it holds the pool files, exposes each active thin
// device as a file of a FUSE mount (direct I/O, parallel direct writes) and
// attaches a loop device (direct I/O) to that file. A flush of the loop
// device arrives as FSYNC and commits the pool; a discard arrives as a
// hole punch and unmaps blocks. Other processes talk to the server through
// a control socket (Client); the first request that needs a device
// (Activate, Hold, Check) starts it, and it exits as soon as no device is
// active and no client holds it (Client.Hold), so an idle pool has no
// process. Requests that need none, such as a snapshot, are done by the
// client itself when no server runs, holding the lock as a server would.
//
// The pool directory:
//
//	metadata       dm-thin metadata (package thinp; and metadata.sizes)
//	data           data blocks (package thinp)
//	lock           flocked by whoever has the pool open: the server for its
//	               life, or a client for one request (Client.inProcess)
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
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
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
	// writes counts the writes and discards completed on devices;
	// committed is its value when the last successful commit began.
	writes, committed atomic.Uint64

	// Only the control loop touches these.
	active   map[uint32]*device
	holds    int
	released chan struct{} // a hold's connection closed
	stop     bool
	closed   bool
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
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	if err := os.Chdir("/"); err != nil { // pin no directory
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
	s = &server{dir: dir, lock: lock, active: map[uint32]*device{}, released: make(chan struct{})}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	s.pool, err = thinp.Open(filepath.Join(dir, MetadataFile), filepath.Join(dir, DataFile))
	if err != nil {
		return nil, err
	}
	if s.fs, err = mountDevFS(filepath.Join(dir, devDir), s); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(dir, socketFile)) // left by a server that died: we hold the lock
	err = withSocketPath(dir, func(path string) (err error) {
		s.ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		return err
	})
	if err != nil {
		return nil, err
	}
	s.ln.SetUnlinkOnClose(false) // close removes it by its real path
	return s, nil
}

// serve answers requests one at a time until no device is active and no
// client holds the server, or until a stop request.
func (s *server) serve() error {
	conns := make(chan *net.UnixConn)
	go func() {
		defer close(conns)
		for {
			conn, err := s.ln.AcceptUnix()
			if err != nil {
				return
			}
			conns <- conn
		}
	}()
	for {
		select {
		case conn, ok := <-conns:
			if !ok {
				return s.close()
			}
			s.answer(conn)
		case <-s.released:
			s.holds--
		}
		if s.stop || (len(s.active) == 0 && s.holds == 0) {
			return s.close()
		}
	}
}

func (s *server) answer(conn *net.UnixConn) {
	conn.SetDeadline(time.Now().Add(time.Minute))
	var req request
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		conn.Close()
		return
	}
	// The work is done even if the client is gone: it could not be undone.
	conn.SetDeadline(time.Time{})
	rep := s.handle(&req)
	if req.Op == opStop && rep.Error == "" {
		// The reply tells that the pool is closed and its devices gone.
		rep = &reply{}
		if err := s.close(); err != nil {
			rep.Error = err.Error()
		}
	}
	err := json.NewEncoder(conn).Encode(rep)
	if req.Op != opHold || err != nil {
		conn.Close()
		return
	}
	s.holds++
	go func() {
		io.Copy(io.Discard, conn) // until the client closes it, or dies
		conn.Close()
		s.released <- struct{}{}
	}()
}

// close gives everything back: devices (when stopping), the socket, the
// FUSE mount, the pool (which commits) and the lock.
func (s *server) close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.ln != nil {
		errs = append(errs, s.ln.Close(), os.Remove(filepath.Join(s.dir, socketFile)))
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
	rep, err := s.do(req)
	if err != nil {
		rep.Error, rep.Kind = errdefs.Message(err), kindOf(err)
	}
	return rep
}

// do carries out req. Without a device file system (s.fs), as in
// Client.inProcess, it must be a metadataOnly request.
func (s *server) do(req *request) (*reply, error) {
	var rep reply
	var err error
	switch req.Op {
	case opCreate:
		err = s.commitAfter(s.pool.CreateThin(req.ID, req.Size))
	case opSnap:
		err = s.snapshot(req.ID, req.Origin, req.NewTxID != 0, req.OldTxID, req.NewTxID)
	case opDelete:
		err = s.delete(req.ID, req.NewTxID != 0, req.OldTxID, req.NewTxID)
	case opActivate:
		rep.Path, err = s.activate(req.ID)
	case opDeactivate:
		err = s.deactivate(req.ID)
	case opStatus, opUsage:
		rep.Status, rep.Active = s.status(req.Op == opStatus)
		rep.Pid = os.Getpid()
	case opGrow:
		err = s.grow(req.DataSize, req.MetadataSize)
	case opCheckCopy:
		rep.Path, err = s.checkCopy()
	case opStop:
		err = s.stopAll()
	case opHold:
	default:
		err = fmt.Errorf("%w: unknown request %q", errdefs.ErrInvalid, req.Op)
	}
	return &rep, err
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
	started := s.writes.Load()
	if err := s.pool.Commit(); err != nil {
		return err
	}
	for { // committed only moves forward
		c := s.committed.Load()
		if started <= c || s.committed.CompareAndSwap(c, started) {
			return nil
		}
	}
}

// flush is a flush from the kernel: a commit, unless no write completed
// since a commit began (the commit holds every completed write). A file
// system issues many flushes with nothing between them, a freeze most.
func (s *server) flush() error {
	if s.writes.Load() == s.committed.Load() {
		return nil
	}
	return s.commit()
}

// snapshot makes id a snapshot of origin, and sets the transaction id in
// the same commit when setTx is. An active origin's file system is frozen
// around it, so that the snapshot holds what it has written.
func (s *server) snapshot(id, origin uint32, setTx bool, oldTx, newTx uint64) error {
	if d := s.active[origin]; d != nil {
		thaw, err := freeze(d.loopPath)
		if err != nil {
			return fmt.Errorf("snapshot of device %d: %w", origin, err)
		}
		defer thaw()
	}
	if err := s.pool.CreateSnap(id, origin); err != nil {
		return err
	}
	return s.setTxAndCommit(setTx, oldTx, newTx)
}

func (s *server) delete(id uint32, setTx bool, oldTx, newTx uint64) error {
	if d := s.active[id]; d != nil {
		return fmt.Errorf("device %d is active on %s: %w", id, d.loopPath, errdefs.ErrInUse)
	}
	if err := s.pool.Delete(id); err != nil {
		return err
	}
	return s.setTxAndCommit(setTx, oldTx, newTx)
}

// setTxAndCommit commits what the request changed, with the new
// transaction id when it sets one; a wrong old id still commits the change.
func (s *server) setTxAndCommit(setTx bool, oldTx, newTx uint64) error {
	var err error
	if setTx {
		err = s.pool.SetTransactionID(oldTx, newTx)
	}
	return errors.Join(err, s.commit())
}

// status returns the pool's status, with each device's counts when
// devices (which walks every mapping tree), and the active devices.
func (s *server) status(devices bool) (thinp.Status, map[uint32]string) {
	active := make(map[uint32]string, len(s.active))
	for id, d := range s.active {
		active[id] = d.loopPath
	}
	if devices {
		return s.pool.Status(), active
	}
	return s.pool.Usage(), active
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
