package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// strataDaemon is one `strata daemon` process started by a test.
type strataDaemon struct {
	cmd  *exec.Cmd
	sock string
	root string
	log  string // file holding the daemon's standard error
	done chan struct{}
	err  error // Wait's result, once done is closed
}

// startDaemon runs `strata --root <tmp> daemon --host unix://<tmp>/strata.sock
// args...` on a fresh root, waits until it answers /_ping, and stops it with
// SIGTERM when the test ends. It returns the socket path and the root.
func startDaemon(t *testing.T, args ...string) (sock, root string) {
	t.Helper()
	d := launchDaemon(t, newRoot(t), args...)
	return d.sock, d.root
}

// launchDaemon starts a daemon on root (the socket lives in root) and
// registers its stop. Tests that signal the daemon themselves use it.
func launchDaemon(t *testing.T, root string, args ...string) *strataDaemon {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: the daemon mounts layers")
	}
	d := &strataDaemon{sock: filepath.Join(root, "strata.sock"), root: root, done: make(chan struct{})}
	logf, err := os.CreateTemp("", "strata-daemon-log.")
	if err != nil {
		t.Fatal(err)
	}
	d.log = logf.Name()
	d.cmd = exec.Command(strataBin, append([]string{"--root", root, "daemon", "--host", "unix://" + d.sock}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); logf.Close(); close(d.done) }()
	t.Cleanup(func() {
		if err := d.stop(30 * time.Second); err != nil {
			t.Errorf("stopping the daemon: %v\n%s", err, d.logTail())
		} else if t.Failed() {
			t.Logf("daemon log:\n%s", d.logTail())
		}
		os.Remove(d.log)
	})
	client := unixHTTP(d.sock)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-d.done:
			t.Fatalf("the daemon exited before answering: %v\n%s", d.err, d.logTail())
		default:
		}
		resp, err := client.Get("http://strata/_ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d
			}
		}
	}
	t.Fatalf("the daemon did not answer /_ping on %s within 30s\n%s", d.sock, d.logTail())
	return nil
}

// stop sends SIGTERM and waits for the exit; after timeout it kills the
// daemon and says so. A daemon that already exited is not an error here.
func (d *strataDaemon) stop(timeout time.Duration) error {
	select {
	case <-d.done:
		return nil
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return d.err
	case <-time.After(timeout):
		d.cmd.Process.Kill()
		<-d.done
		return errors.New("no exit within " + timeout.String() + " of SIGTERM: killed")
	}
}

// logTail is the end of the daemon's log, after its failed requests and
// warnings from anywhere in it.
func (d *strataDaemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	var failed []string
	for _, line := range strings.Split(string(b), "\n") {
		if failedRequest.MatchString(line) || strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			failed = append(failed, line)
		}
	}
	return strings.Join(failed[max(0, len(failed)-40):], "\n") + "\n...\n" + tail(string(b), 3000)
}

var failedRequest = regexp.MustCompile(`status=[45]\d\d`)

// unixHTTP is an HTTP client that dials the unix socket sock whatever the URL's host.
func unixHTTP(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}

// The two docker CLIs the daemon must serve: Debian's 20.10 negotiates API
// 1.41, the 28.2 one 1.50.
const (
	dockerOld = "/usr/bin/docker"
	dockerNew = "/usr/local/bin/docker"
)

// newestDocker is the CLI the daemon tests use by default: 28.2 when
// installed, else Debian's.
func newestDocker(t *testing.T) string {
	t.Helper()
	for _, bin := range []string{dockerNew, dockerOld} {
		if _, err := os.Stat(bin); err == nil {
			return bin
		}
	}
	t.Fatal("no docker CLI: apt-get install docker.io")
	return ""
}

// dockerOn runs the newest docker CLI against the daemon on sock. (The name
// dockerCLI is taken by docker_test.go's path of the dockerd-matching CLI.)
func dockerOn(t *testing.T, sock string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runDocker(t, newestDocker(t), sock, nil, args...)
}

// runDocker runs the docker CLI bin with -H unix://sock and args, stdin as
// its input; it fails the test only when the CLI cannot run at all.
func runDocker(t *testing.T, bin, sock string, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-H", "unix://" + sock}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dockerConfigDir(t), "DOCKER_CLI_HINTS=false")
	cmd.Stdin = stdin
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("running %s %s: %v", bin, strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), code
}

// dockerConfigDir is an empty CLI configuration, so that no user's
// ~/.docker/config.json (a context, a credential helper) changes what runs.
func dockerConfigDir(t *testing.T) string {
	dir := filepath.Join(os.TempDir(), "strata-e2e-docker-config")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestDaemonCommand checks what `strata daemon` refuses and that the strata
// CLI works on the daemon's root while it runs.
func TestDaemonCommand(t *testing.T) {
	d := launchDaemon(t, newRoot(t))

	t.Run("socket", func(t *testing.T) {
		fi, err := os.Stat(d.sock)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
			t.Errorf("socket mode %v, want a socket with 0660", fi.Mode())
		}
		// DOCKER_HOST instead of -H
		cmd := exec.Command(newestDocker(t), "version", "--format", "{{.Server.APIVersion}}")
		cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+d.sock, "DOCKER_CONFIG="+dockerConfigDir(t))
		if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "1.50" {
			t.Errorf("docker version with DOCKER_HOST: %v %q", err, out)
		}
	})

	t.Run("second-daemon-refused", func(t *testing.T) {
		code, msg := daemonFails(t, d.root, "--host", "unix://"+filepath.Join(d.root, "second.sock"))
		if code == 0 || !strings.Contains(msg, "another strata daemon") || !strings.Contains(msg, strconv.Itoa(d.cmd.Process.Pid)) {
			t.Errorf("second daemon on one root: exit %d, %q; want a refusal naming pid %d", code, msg, d.cmd.Process.Pid)
		}
		if _, _, code := dockerOn(t, d.sock, "version"); code != 0 {
			t.Errorf("the first daemon stopped answering after the refused second one")
		}
	})

	t.Run("plain-tcp-refused", func(t *testing.T) {
		code, msg := daemonFails(t, newRoot(t), "--host", "tcp://127.0.0.1:0")
		if code == 0 || !strings.Contains(strings.ToLower(msg), "tls") {
			t.Errorf("plain TCP: exit %d, %q; want a refusal that asks for TLS", code, msg)
		}
	})

	t.Run("sigterm-cancels-stalled-export", func(t *testing.T) {
		// a client that stops reading an export keeps the container
		// mounted: SIGTERM must still end the daemon and release the mount
		d := launchDaemon(t, newRoot(t), "--shutdown-timeout", "2s")
		archive := filepath.Join(t.TempDir(), "big.tar")
		writeArchive(t, archive, map[string][][]byte{"big:1": {layerTar(t, map[string]string{"big": strings.Repeat("strata!\n", 4<<20)})}})
		strata(t, d.root, "load", "-q", "-i", archive)
		if _, msg, code := dockerOn(t, d.sock, "create", "--name", "stalled", "big:1"); code != 0 {
			t.Fatal(msg)
		}
		resp, err := unixHTTP(d.sock).Get("http://strata/v1.50/containers/stalled/export")
		must(t, err)
		defer resp.Body.Close()
		if _, err := io.CopyN(io.Discard, resp.Body, 1<<10); err != nil {
			t.Fatal(err)
		}
		if err := d.stop(30 * time.Second); err != nil {
			t.Errorf("SIGTERM with an export stalled: %v\n%s", err, d.logTail())
		}
		if m := mountsUnder(d.root); len(m) > 0 {
			t.Errorf("mounts left after SIGTERM: %v", m)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err == nil {
			t.Errorf("the stalled export ended cleanly: a cut tar must not look whole")
		}
		strata(t, d.root, "rm", "stalled")
		strata(t, d.root, "rmi", "big:1")
	})

	t.Run("cli-alongside", func(t *testing.T) {
		archive := filepath.Join(t.TempDir(), "tiny.tar")
		writeArchive(t, archive, map[string][][]byte{"tiny:1": {layerTar(t, map[string]string{"bin/tool": "#!/bin/sh\n"})}})
		strata(t, d.root, "load", "-q", "-i", archive)
		if out, _, _ := dockerOn(t, d.sock, "images", "--format", "{{.Repository}}:{{.Tag}}"); !hasLine(out, "tiny:1") {
			t.Fatalf("docker images after strata load: %q", out)
		}
		// both sides create and remove containers on the store at once
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := range 5 {
					name := fmt.Sprintf("alongside-%d-%d", w, i)
					if w%2 == 0 {
						if _, msg, code := dockerOn(t, d.sock, "create", "--name", name, "tiny:1"); code != 0 {
							t.Errorf("docker create %s: %s", name, msg)
							return
						}
						if code, msg := strataRun(d.root, "diff", name); code != 0 {
							t.Errorf("strata diff %s: %s", name, msg)
						}
						if code, msg := strataRun(d.root, "rm", name); code != 0 {
							t.Errorf("strata rm %s: %s", name, msg)
						}
					} else {
						if code, msg := strataRun(d.root, "create", "--name", name, "tiny:1"); code != 0 {
							t.Errorf("strata create %s: %s", name, msg)
							return
						}
						if _, msg, code := dockerOn(t, d.sock, "diff", name); code != 0 {
							t.Errorf("docker diff %s: %s", name, msg)
						}
						if _, msg, code := dockerOn(t, d.sock, "rm", name); code != 0 {
							t.Errorf("docker rm %s: %s", name, msg)
						}
					}
				}
			})
		}
		wg.Wait()
		if out, _, _ := dockerOn(t, d.sock, "ps", "-a", "-q"); out != "" {
			t.Errorf("containers left: %q", out)
		}
		if out, msg, code := dockerOn(t, d.sock, "rmi", "tiny:1"); code != 0 || !strings.Contains(out, "Deleted: ") {
			t.Errorf("docker rmi tiny:1 (loaded by strata): exit %d %q %q", code, out, msg)
		}
		if out := strata(t, d.root, "images", "--tree"); out != "" {
			t.Errorf("layers left:\n%s", out)
		}
	})
}

// daemonFails runs a daemon that must refuse to start; it is killed if it
// still runs after 20 seconds.
func daemonFails(t *testing.T, root string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, strataBin, append([]string{"--root", root, "daemon"}, args...)...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("strata daemon %s still ran after 20s, want a refusal\n%s", strings.Join(args, " "), out)
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), string(out)
	}
	return 0, string(out)
}

// strataRun runs the strata CLI on root from any goroutine: it returns the
// exit code and the output instead of failing the test.
func strataRun(root string, args ...string) (int, string) {
	out, err := exec.Command(strataBin, append([]string{"--root", root}, args...)...).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), string(out)
	}
	if err != nil {
		return -1, err.Error()
	}
	return 0, string(out)
}

// TestDaemonMutualTLS serves TCP with --tlsverify: the docker CLI with a
// client certificate the CA signed gets in, one without a certificate or
// with a certificate of another CA does not.
func TestDaemonMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "strata-e2e-ca")
	ca.issue(t, dir, "server", x509.ExtKeyUsageServerAuth)
	ca.issue(t, dir, "client", x509.ExtKeyUsageClientAuth)
	ca.writeCert(t, filepath.Join(dir, "ca.pem"))
	other := newTestCA(t, "another-ca")
	other.issue(t, dir, "stranger", x509.ExtKeyUsageClientAuth)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	l.Close()
	launchDaemon(t, newRoot(t), "--host", "tcp://"+addr, "--tlsverify",
		"--tlscacert", filepath.Join(dir, "ca.pem"), "--tlscert", filepath.Join(dir, "server-cert.pem"), "--tlskey", filepath.Join(dir, "server-key.pem"))

	docker := func(args ...string) (string, error) {
		cmd := exec.Command(newestDocker(t), append([]string{"-H", "tcp://" + addr}, args...)...)
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dockerConfigDir(t))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	file := func(name string) string { return filepath.Join(dir, name+".pem") }
	if out, err := docker("--tlsverify", "--tlscacert", file("ca"), "--tlscert", file("client-cert"), "--tlskey", file("client-key"), "version", "--format", "{{.Server.APIVersion}}"); err != nil || strings.TrimSpace(out) != "1.50" {
		t.Errorf("docker with a client certificate: %v %q", err, out)
	}
	if out, err := docker("--tls", "--tlscacert", file("ca"), "version", "--format", "{{.Server.APIVersion}}"); err == nil {
		t.Errorf("docker without a client certificate got in: %q", out)
	}
	if out, err := docker("--tlsverify", "--tlscacert", file("ca"), "--tlscert", file("stranger-cert"), "--tlskey", file("stranger-key"), "version", "--format", "{{.Server.APIVersion}}"); err == nil {
		t.Errorf("docker with another CA's certificate got in: %q", out)
	}
	if out, err := docker("version", "--format", "{{.Server.APIVersion}}"); err == nil {
		t.Errorf("docker over plain HTTP got in: %q", out)
	}
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	cert, err := x509.ParseCertificate(der)
	must(t, err)
	return &testCA{cert: cert, key: key, der: der}
}

func (ca *testCA) writeCert(t *testing.T, path string) {
	t.Helper()
	must(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der}), 0o644))
}

// issue writes <name>-cert.pem and <name>-key.pem in dir, for 127.0.0.1.
func (ca *testCA) issue(t *testing.T, dir, name string, usage x509.ExtKeyUsage) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	must(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, name+"-cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
}
