package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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

func (d *strataDaemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	return tail(string(b), 4000)
}

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
