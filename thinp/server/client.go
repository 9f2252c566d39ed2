package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/internal/reexec"
	"github.com/strata-storage/strata/thinp"
)

// CreatePool makes a pool in dir, which must not hold one.
func CreatePool(dir string, opts thinp.Options) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("pool %s: %w: %w", dir, errBusy, errdefs.ErrInUse)
	}
	p, err := thinp.Create(filepath.Join(dir, MetadataFile), filepath.Join(dir, DataFile), opts)
	if err != nil {
		return fmt.Errorf("pool %s: %w", dir, err)
	}
	return p.Close()
}

// Client makes requests to the server of the pool in Dir, starting the
// server when one needs a device and none runs, or does them in this
// process when they need none and no server runs. Its methods are dm-thin's messages and dmsetup's
// commands; every change is committed before it returns.
type Client struct{ Dir string }

// Status is the pool's status, the active devices' loop device paths and
// the server's process id.
type Status struct {
	thinp.Status
	Active map[uint32]string
	Pid    int
}

func (c *Client) CreateThin(id uint32, size int64) error {
	_, err := c.call(&request{Op: opCreate, ID: id, Size: size})
	return err
}

// CreateSnap makes id a snapshot of origin, freezing the file system
// mounted on origin, if it is active, for the time it takes.
func (c *Client) CreateSnap(id, origin uint32) error {
	_, err := c.call(&request{Op: opSnap, ID: id, Origin: origin})
	return err
}

func (c *Client) Delete(id uint32) error {
	_, err := c.call(&request{Op: opDelete, ID: id})
	return err
}

// CreateSnapTx is CreateSnap and SetTransactionID(oldTx, newTx) in one
// commit: the transaction id says whether the snapshot was made.
func (c *Client) CreateSnapTx(id, origin uint32, oldTx, newTx uint64) error {
	_, err := c.call(&request{Op: opSnap, ID: id, Origin: origin, OldTxID: oldTx, NewTxID: newTx})
	return err
}

// DeleteTx is Delete and SetTransactionID(oldTx, newTx) in one commit.
func (c *Client) DeleteTx(id uint32, oldTx, newTx uint64) error {
	_, err := c.call(&request{Op: opDelete, ID: id, OldTxID: oldTx, NewTxID: newTx})
	return err
}

// PreparedSnap makes id a snapshot of origin, raising the transaction id by
// one in the same commit, after prepare has accepted the pool's usage (a
// free space check) and recorded the coming transaction: a create costs
// one opening of the pool when no server runs.
func (c *Client) PreparedSnap(id, origin uint32, prepare func(Status) error) error {
	return c.prepared(&request{Op: opSnap, ID: id, Origin: origin}, prepare)
}

// PreparedDelete is Delete as PreparedSnap is CreateSnapTx.
func (c *Client) PreparedDelete(id uint32, prepare func(Status) error) error {
	return c.prepared(&request{Op: opDelete, ID: id}, prepare)
}

// Activate makes device id a block device and returns its path
// (/dev/loopN); the device stays active, and its server running, until
// Deactivate.
func (c *Client) Activate(id uint32) (string, error) {
	rep, err := c.call(&request{Op: opActivate, ID: id})
	if err != nil {
		return "", err
	}
	return rep.Path, nil
}

// Deactivate detaches device id; it fails with ErrInUse while a file system
// is mounted on it.
func (c *Client) Deactivate(id uint32) error {
	_, err := c.call(&request{Op: opDeactivate, ID: id})
	return err
}

// Status returns the pool's status with every device's counts, which walks
// all their mapping trees; Usage is the same without the devices.
func (c *Client) Status() (Status, error) { return c.status(opStatus) }

// Usage returns the pool's space and transaction id and the active devices,
// from counters only: cheap enough for every layer create.
func (c *Client) Usage() (Status, error) { return c.status(opUsage) }

func (c *Client) status(op string) (Status, error) {
	rep, err := c.call(&request{Op: op})
	if err != nil {
		return Status{}, err
	}
	return Status{Status: rep.Status, Active: rep.Active, Pid: rep.Pid}, nil
}

// Grow extends the data and metadata files to the sizes given (0: as they
// are), online.
func (c *Client) Grow(dataSize, metadataSize int64) error {
	_, err := c.call(&request{Op: opGrow, DataSize: dataSize, MetadataSize: metadataSize})
	return err
}

// Check runs thin_check on a copy of the last committed metadata and
// returns its output.
func (c *Client) Check() (string, error) {
	tool, err := exec.LookPath("thin_check")
	if err != nil {
		return "", fmt.Errorf("thin_check is missing (install thin-provisioning-tools): %w", errdefs.ErrNotSupported)
	}
	rep, err := c.call(&request{Op: opCheckCopy})
	if err != nil {
		return "", err
	}
	defer os.Remove(rep.Path)
	out, err := exec.Command(tool, rep.Path).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("thin_check: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Hold keeps the server running, and the pool open, until the returned
// Closer is closed (or this process exits), so that a user with many
// requests does not start a server for each.
func (c *Client) Hold() (io.Closer, error) {
	conn, _, err := c.connect(&request{Op: opHold})
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// Stop deactivates every device and ends the server, and returns once the
// pool is closed; without a server it does nothing. It fails with ErrInUse,
// leaving everything as it was, while a device is in use.
func (c *Client) Stop() error {
	conn, err := c.dial()
	if err == nil {
		_, err = exchange(conn, &request{Op: opStop})
		conn.Close()
		if !errors.Is(err, errNoReply) {
			return err
		}
	}
	// No server, or one on its way out: wait until it is gone.
	lock, err := os.Open(filepath.Join(c.Dir, lockFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer lock.Close()
	return unix.Flock(int(lock.Fd()), unix.LOCK_SH)
}

// Running tells whether a server answers for the pool now.
func (c *Client) Running() bool {
	conn, err := c.dial()
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func (c *Client) dial() (conn *net.UnixConn, err error) {
	err = withSocketPath(c.Dir, func(path string) (err error) {
		conn, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		return err
	})
	return conn, err
}

// errNoReply is a connection closed before the reply: the server was
// closing its socket, or died.
var errNoReply = errors.New("thin server closed the connection")

// exchange sends req and reads the reply; the connection stays open.
func exchange(conn *net.UnixConn, req *request) (*reply, error) {
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, errNoReply
	}
	var rep reply
	if err := json.NewDecoder(conn).Decode(&rep); err != nil {
		return nil, errNoReply
	}
	return &rep, rep.err()
}

func (c *Client) call(req *request) (*reply, error) {
	if metadataOnly(req.Op) {
		return c.request(req)
	}
	conn, rep, err := c.connect(req)
	if conn != nil {
		conn.Close()
	}
	return rep, err
}

// metadataOnly tells whether a request needs no active device, and so no
// server: it can be done in any process that has the pool open.
func metadataOnly(op string) bool {
	switch op {
	case opCreate, opSnap, opDelete, opDeactivate, opStatus, opUsage, opGrow:
		return true
	}
	return false
}

// request does a metadataOnly request in this process when no server runs,
// which saves starting one (a process and a FUSE mount) for a snapshot, and
// otherwise sends it to the server, which alone may change the pool while
// it runs. While the lock is held and no server answers, a server is
// starting or closing, or another client has the pool: it waits.
func (c *Client) request(req *request) (*reply, error) {
	if err := c.checkPool(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(time.Minute)
	for wait := time.Millisecond; ; wait = min(2*wait, 20*time.Millisecond) {
		rep, done, err := c.inProcess(req)
		if done {
			return rep, err
		}
		if conn, err := c.dial(); err == nil {
			rep, err := exchange(conn, req)
			conn.Close()
			if !errors.Is(err, errNoReply) {
				return rep, err
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("thin pool %s: held by a process that does not answer: %w", c.Dir, errdefs.ErrInUse)
		}
		time.Sleep(wait)
	}
}

// inProcess opens the pool, does req, commits and closes the pool, all
// holding the pool's lock; done is false, with nothing done, when another
// process holds the lock. A server starting meanwhile finds the lock taken
// and is started again by its client until it gets it, so that a running
// server has seen every change to the pool.
func (c *Client) inProcess(req *request) (rep *reply, done bool, err error) {
	if req.Op == opDeactivate { // only a server has active devices
		lock, err := c.tryLock()
		if lock == nil {
			return nil, err != nil, err
		}
		lock.Close()
		return &reply{}, true, fmt.Errorf("device %d is not active: %w", req.ID, errdefs.ErrNotFound)
	}
	done, err = c.withPool(func(s *server) (err error) {
		rep, err = s.do(req)
		return err
	})
	if rep != nil {
		rep.Pid = 0 // no server runs
	}
	return rep, done, err
}

// tryLock takes the pool's lock; it returns no file, and no error, when
// another process holds it.
func (c *Client) tryLock() (*os.File, error) {
	lock, err := os.OpenFile(filepath.Join(c.Dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, err
	}
	return lock, nil
}

// withPool runs fn on the pool opened in this process, holding the pool's
// lock, and closes the pool; done is false, with nothing done, when another
// process holds the lock.
func (c *Client) withPool(fn func(s *server) error) (done bool, err error) {
	lock, err := c.tryLock()
	if lock == nil {
		return err != nil, err
	}
	defer lock.Close()
	pool, err := thinp.Open(filepath.Join(c.Dir, MetadataFile), filepath.Join(c.Dir, DataFile))
	if err != nil {
		return true, fmt.Errorf("thin pool %s: %w", c.Dir, err)
	}
	s := &server{dir: c.Dir, pool: pool, active: map[uint32]*device{}}
	return true, errors.Join(fn(s), pool.Close())
}

// prepared makes a snapshot or delete (req) in one commit with the pool's
// transaction id raised by one, once prepare, given the pool's usage, has
// returned nil; nothing changes if it fails. Without a server the pool is
// opened once for all of it.
func (c *Client) prepared(req *request, prepare func(Status) error) error {
	if err := c.checkPool(); err != nil {
		return err
	}
	done, err := c.withPool(func(s *server) error {
		st, _ := s.status(false)
		if err := prepare(Status{Status: st}); err != nil {
			return err
		}
		req.OldTxID, req.NewTxID = st.TransactionID, st.TransactionID+1
		_, err := s.do(req)
		return err
	})
	if done {
		return err
	}
	// A server runs, or another client has the pool: two requests.
	st, err := c.Usage()
	if err != nil {
		return err
	}
	if err := prepare(st); err != nil {
		return err
	}
	req.OldTxID, req.NewTxID = st.TransactionID, st.TransactionID+1
	_, err = c.call(req)
	return err
}

func (c *Client) checkPool() error {
	if _, err := os.Stat(filepath.Join(c.Dir, MetadataFile)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no thin pool in %s (strata thin pool create): %w", c.Dir, errdefs.ErrNotFound)
		}
		return err
	}
	return nil
}

// connect sends req to the server, starting one if none answers, and
// returns the open connection with the reply. A server answers one request
// at a time and exits after the last deactivation, so a request can meet a
// server on its way out: it is sent again to a new one.
func (c *Client) connect(req *request) (*net.UnixConn, *reply, error) {
	if err := c.checkPool(); err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		conn, err := c.dial()
		if err == nil {
			rep, err := exchange(conn, req)
			if !errors.Is(err, errNoReply) {
				if err != nil {
					conn.Close()
					return nil, rep, err
				}
				return conn, rep, nil
			}
			conn.Close()
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("thin pool %s: no server answers (see %s)", c.Dir, filepath.Join(c.Dir, logFile))
		}
		if err := c.startServer(); err != nil {
			return nil, nil, err
		}
	}
}

// startServer starts a server and waits until it listens, or finds that
// another one holds the pool.
func (c *Client) startServer() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	log, err := os.OpenFile(filepath.Join(c.Dir, logFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		w.Close()
		return err
	}
	cmd := reexec.Command(entryPoint, c.Dir)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	log.Close()
	if err != nil {
		return fmt.Errorf("start thin server: %w", err)
	}
	go cmd.Wait() // reap it whenever it exits
	msg, _ := io.ReadAll(r)
	switch line := strings.TrimSpace(string(msg)); line {
	case "ready":
		return nil
	case "busy": // the server holding the pool is still starting or closing
		time.Sleep(10 * time.Millisecond)
		return nil
	case "":
		return fmt.Errorf("thin server for %s exited (see %s)", c.Dir, filepath.Join(c.Dir, logFile))
	default:
		return fmt.Errorf("thin server for %s: %s", c.Dir, line)
	}
}
