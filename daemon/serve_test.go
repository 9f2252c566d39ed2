package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/errdefs"
)

// unixClient is an HTTP client of the socket at path.
func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// serve runs d.Serve in the background until the test stops it with the
// returned function, which returns Serve's error.
func serve(t *testing.T, d *Daemon, opts Options) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, opts) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitSocket waits until something listens on path.
func waitSocket(t *testing.T, path string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s", path)
}

func TestServeUnixSocket(t *testing.T) {
	api := newAPIDaemon(t)
	d := New(api.s, slog.New(slog.DiscardHandler))
	sock := filepath.Join(t.TempDir(), "strata.sock")
	// A socket file nobody answers on, as a killed daemon leaves, is replaced.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()

	stop := serve(t, d, Options{Hosts: []string{"unix://" + sock}})
	waitSocket(t, sock)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	resp, err := unixClient(sock).Get("http://strata/v1.50/_ping")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "OK" || resp.Header.Get("Api-Version") != "1.50" {
		t.Fatalf("ping: %d %q %v", resp.StatusCode, body, resp.Header)
	}

	// A second daemon on the same socket is refused while the first answers.
	err = New(api.s, slog.New(slog.DiscardHandler)).Serve(context.Background(), Options{Hosts: []string{"unix://" + sock}})
	if !errors.Is(err, errdefs.ErrInUse) {
		t.Fatalf("second daemon on a live socket: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after shutdown: %v", err)
	}
}

func TestServeRefusesPlainTCP(t *testing.T) {
	d := New(nil, slog.New(slog.DiscardHandler))
	for _, opts := range []Options{
		{Hosts: []string{"tcp://127.0.0.1:0"}},
		{Hosts: []string{"tcp://127.0.0.1:0"}, TLS: &tls.Config{}}, // TLS without client certificates
	} {
		err := d.Serve(context.Background(), opts)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "without mutual TLS") {
			t.Errorf("%+v: %v", opts, err)
		}
	}
	for _, host := range []string{"http://x", "/run/x.sock", "unix://"} {
		if err := d.Serve(context.Background(), Options{Hosts: []string{host}}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("host %q: %v", host, err)
		}
	}
	notSocket := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notSocket, nil, 0o644)
	if err := d.Serve(context.Background(), Options{Hosts: []string{"unix://" + notSocket}}); !errors.Is(err, errdefs.ErrExists) {
		t.Errorf("a regular file in the socket's place: %v", err)
	}
}

// certs writes a CA and a server and a client certificate it signs.
func certs(t *testing.T) (dir string) {
	t.Helper()
	dir = t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER)
	for i, name := range []string{"server", "client"} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		writePEM(t, filepath.Join(dir, name+"-cert.pem"), "CERTIFICATE", der)
		writePEM(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", keyDER)
	}
	return dir
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestServeMutualTLS(t *testing.T) {
	api := newAPIDaemon(t)
	dir := certs(t)
	cfg, err := MutualTLS(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server-cert.pem"), filepath.Join(dir, "server-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0") // a free port
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	serve(t, New(api.s, slog.New(slog.DiscardHandler)), Options{Hosts: []string{"tcp://" + addr}, TLS: cfg})

	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	pool.AppendCertsFromPEM(caPEM)
	clientCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client-cert.pem"), filepath.Join(dir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(certs []tls.Certificate) (*http.Response, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
		var resp *http.Response
		var err error
		for i := 0; i < 300; i++ {
			if resp, err = c.Get("https://" + addr + "/_ping"); err == nil || !strings.Contains(err.Error(), "connection refused") {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		return resp, err
	}
	resp, err := get([]tls.Certificate{clientCert})
	if err != nil {
		t.Fatalf("ping with a client certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ping with a client certificate: %d", resp.StatusCode)
	}
	if resp, err := get(nil); err == nil {
		resp.Body.Close()
		t.Fatalf("ping without a client certificate answered %d", resp.StatusCode)
	}
}

// TestShutdownCancelsRequests starts a load whose body never ends: the
// shutdown waits for it, then cancels it, and leaves the store clean.
func TestShutdownCancelsRequests(t *testing.T) {
	api := newAPIDaemon(t)
	sock := filepath.Join(t.TempDir(), "s.sock")
	stop := serve(t, New(api.s, slog.New(slog.DiscardHandler)), Options{Hosts: []string{"unix://" + sock}, ShutdownTimeout: 100 * time.Millisecond})
	waitSocket(t, sock)

	pr, pw := io.Pipe()
	defer pw.Close()
	archive := testArchive(t, testImage{tags: []string{"a:1"}, layers: [][]byte{layerOf(t, "a")}})
	go pw.Write(archive[:len(archive)/2])
	failed := make(chan error, 1)
	go func() {
		resp, err := unixClient(sock).Post("http://strata/v1.50/images/load?quiet=1", "application/x-tar", pr)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			err = errors.New(strconv.Itoa(resp.StatusCode) + " " + string(b))
		}
		failed <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the request reach the handler; the test holds either way
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	pw.CloseWithError(errors.New("client gave up")) // the client's body writer waits for it
	if err := <-failed; err == nil {
		t.Fatal("the interrupted load succeeded")
	}
	if imgs, err := api.s.Images().List(); err != nil || len(imgs) != 0 {
		t.Fatalf("images after an interrupted load: %v %v", imgs, err)
	}
	if tmp, _ := os.ReadDir(filepath.Join(api.s.Root(), "tmp")); len(tmp) != 0 {
		t.Fatalf("spool files left: %v", tmp)
	}
}

func TestLockRoot(t *testing.T) {
	root := t.TempDir()
	release, err := LockRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	_, err = LockRoot(root)
	want := "another strata daemon is using " + root + " (pid " + strconv.Itoa(os.Getpid()) + ")"
	if !errors.Is(err, errdefs.ErrInUse) || errdefs.Message(err) != want {
		t.Fatalf("second lock: %v, want %q", err, want)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	release, err = LockRoot(root)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release()
}
