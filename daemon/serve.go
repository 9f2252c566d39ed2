package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"sync"
	"time"

	"github.com/strata-storage/strata/errdefs"
)

// DefaultHost is where the daemon listens unless told otherwise.
const DefaultHost = "unix:///run/strata.sock"

// Options configure Serve.
type Options struct {
	// Hosts are the addresses to listen on: unix:///path or tcp://host:port
	// (tcp only with TLS). Default DefaultHost.
	Hosts []string
	// TLS serves tcp hosts; it must verify clients (see MutualTLS): the
	// API is root on the store, so no one may reach it unauthenticated.
	TLS *tls.Config
	// SocketGroup owns unix sockets (mode 0660) when the group exists.
	SocketGroup string
	// ShutdownTimeout is how long requests under way may finish once
	// ctx ends; then their contexts are cancelled. Default 10s.
	ShutdownTimeout time.Duration
}

// Serve answers on every host until ctx ends, then shuts down: it stops
// accepting, lets requests under way finish for ShutdownTimeout, then
// cancels their contexts and waits for their handlers to return, so that
// the caller may close the store after it.
func (d *Daemon) Serve(ctx context.Context, opts Options) error {
	if err := opts.Check(); err != nil {
		return err
	}
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	for _, h := range opts.hosts() {
		l, err := opts.listen(h)
		if err != nil {
			closeAll()
			return err
		}
		listeners = append(listeners, l)
	}

	base, cancelRequests := context.WithCancel(context.Background())
	defer cancelRequests()
	handlers := &inFlight{}
	handler := d.Handler()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !handlers.start() {
				writeError(w, errors.New("the daemon is shutting down"))
				return
			}
			defer handlers.wg.Done()
			handler.ServeHTTP(w, r)
		}),
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn), // TLS handshake failures
		ReadHeaderTimeout: 30 * time.Second,
	}
	errs := make(chan error, len(listeners))
	for _, l := range listeners {
		d.log.Info("listening", "addr", l.Addr().Network()+"://"+l.Addr().String())
		go func() { errs <- srv.Serve(l) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs: // a listener failed: stop the others too
	}
	d.log.Info("shutting down")
	timeout := opts.ShutdownTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if serr := srv.Shutdown(shutdownCtx); serr != nil {
		d.log.Warn("requests still under way: cancelling them", "timeout", timeout)
		cancelRequests()
		srv.Close()
	}
	handlers.drain()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// inFlight counts the handlers running, so that Serve returns only once
// none uses the store; once draining, no handler starts.
type inFlight struct {
	mu       sync.Mutex
	draining bool
	wg       sync.WaitGroup
}

func (f *inFlight) start() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.draining {
		f.wg.Add(1)
	}
	return !f.draining
}

func (f *inFlight) drain() {
	f.mu.Lock()
	f.draining = true
	f.mu.Unlock()
	f.wg.Wait()
}

// Check refuses hosts Serve would refuse, before anything is opened: an
// address that is not unix:///path or tcp://host:port, and tcp without
// mutual TLS, as anyone reaching it would be root on the store.
func (o Options) Check() error {
	for _, h := range o.hosts() {
		if _, _, err := o.parseHost(h); err != nil {
			return err
		}
	}
	return nil
}

func (o Options) hosts() []string {
	if len(o.Hosts) == 0 {
		return []string{DefaultHost}
	}
	return o.Hosts
}

// parseHost returns the network and address of host.
func (o Options) parseHost(host string) (network, addr string, err error) {
	u, err := url.Parse(host)
	if err != nil || u.Scheme == "" {
		return "", "", fmt.Errorf("host %q: want unix:///path or tcp://host:port: %w", host, errdefs.ErrInvalid)
	}
	switch u.Scheme {
	case "unix":
		if u.Path == "" {
			return "", "", fmt.Errorf("host %q: no socket path: %w", host, errdefs.ErrInvalid)
		}
		return "unix", u.Path, nil
	case "tcp":
		if o.TLS == nil || o.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
			return "", "", fmt.Errorf("refusing to listen on %s without mutual TLS: anyone reaching it would be root on the store; use --tlsverify --tlscacert --tlscert --tlskey: %w", host, errdefs.ErrInvalid)
		}
		return "tcp", u.Host, nil
	}
	return "", "", fmt.Errorf("host %q: scheme %q: want unix or tcp: %w", host, u.Scheme, errdefs.ErrInvalid)
}

// listen opens one host address.
func (o Options) listen(host string) (net.Listener, error) {
	network, addr, err := o.parseHost(host)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		return listenUnix(addr, o.SocketGroup)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(l, o.TLS), nil
}

// listenUnix listens on a socket file, mode 0660, group group when it
// exists. A socket file left by a daemon that died is replaced; one that
// answers is another daemon's and stays.
func listenUnix(path, group string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket: %w", path, errdefs.ErrExists)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another daemon is listening on it: %w", path, errdefs.ErrInUse)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("stale socket: %w", err)
		}
	}
	// The socket is made under a temporary name and renamed once its owner
	// and mode are set: clients never see it open to everyone.
	tmp := fmt.Sprintf("%s.tmp-%d", path, os.Getpid())
	os.Remove(tmp) // left by a daemon of this pid that died
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	gid := -1
	if g, err := user.LookupGroup(group); group != "" && err == nil {
		gid, _ = strconv.Atoi(g.Gid)
	}
	err = os.Chown(tmp, 0, gid)
	if os.Geteuid() != 0 {
		err = nil // a daemon of one user keeps the socket its own
	}
	if err == nil {
		err = os.Chmod(tmp, 0o660)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return socketListener{l, path}, nil
}

// socketListener removes its socket file when closed (under the name it
// was renamed to, which the listener itself does not know).
type socketListener struct {
	net.Listener
	path string
}

func (l socketListener) Close() error {
	err := l.Listener.Close()
	os.Remove(l.path)
	return err
}

// MutualTLS is the server TLS configuration of --tlsverify: the daemon's
// key pair, and clients must present a certificate signed by the CA.
func MutualTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS key pair: %v: %w", err, errdefs.ErrInvalid)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("TLS CA %s: no certificate found: %w", caFile, errdefs.ErrInvalid)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}
