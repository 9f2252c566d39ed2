package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
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
	hosts := opts.Hosts
	if len(hosts) == 0 {
		hosts = []string{DefaultHost}
	}
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	for _, h := range hosts {
		l, err := listen(h, opts)
		if err != nil {
			closeAll()
			return err
		}
		listeners = append(listeners, l)
	}

	base, cancelRequests := context.WithCancel(context.Background())
	defer cancelRequests()
	var inFlight sync.WaitGroup
	handler := d.Handler()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			inFlight.Add(1)
			defer inFlight.Done()
			handler.ServeHTTP(w, r)
		}),
		BaseContext:       func(net.Listener) context.Context { return base },
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
	inFlight.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// listen opens one host address.
func listen(host string, opts Options) (net.Listener, error) {
	u, err := url.Parse(host)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("host %q: want unix:///path or tcp://host:port: %w", host, errdefs.ErrInvalid)
	}
	switch u.Scheme {
	case "unix":
		return listenUnix(u.Path, opts.SocketGroup)
	case "tcp":
		if opts.TLS == nil || opts.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
			return nil, fmt.Errorf("refusing to listen on %s without mutual TLS: anyone reaching it would be root on the store; use --tlsverify --tlscacert --tlscert --tlskey: %w", host, errdefs.ErrInvalid)
		}
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			return nil, err
		}
		return tls.NewListener(l, opts.TLS), nil
	}
	return nil, fmt.Errorf("host %q: scheme %q: want unix or tcp: %w", host, u.Scheme, errdefs.ErrInvalid)
}

// listenUnix listens on a socket file, mode 0660, group group when it
// exists. A socket file left by a daemon that died is replaced; one that
// answers is another daemon's and stays.
func listenUnix(path, group string) (net.Listener, error) {
	if path == "" {
		return nil, fmt.Errorf("unix socket: empty path: %w", errdefs.ErrInvalid)
	}
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
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	gid := -1
	if g, err := user.LookupGroup(group); group != "" && err == nil {
		gid, _ = strconv.Atoi(g.Gid)
	}
	err = os.Chown(path, 0, gid)
	if os.Geteuid() != 0 {
		err = nil // a daemon of one user keeps the socket its own
	}
	if err == nil {
		err = os.Chmod(path, 0o660)
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return l, nil
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
