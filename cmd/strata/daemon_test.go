package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/strata-storage/strata/errdefs"
)

// TestDaemonSIGTERM runs `strata daemon` in this process: a second daemon
// on the root is refused, SIGTERM stops the first cleanly (socket and lock
// released), and a new daemon can then start.
func TestDaemonSIGTERM(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: the store keeps file owners")
	}
	dir := t.TempDir()
	root, sock := filepath.Join(dir, "root"), filepath.Join(dir, "s.sock")
	daemon := func(sock string) chan error {
		done := make(chan error, 1)
		cmd := newRootCommand()
		cmd.SetArgs([]string{"--root", root, "--storage-driver", "vfs", "daemon", "--host", "unix://" + sock})
		go func() { done <- cmd.Execute() }()
		return done
	}
	first := daemon(sock)
	waitListening(t, sock, first)

	err := <-daemon(filepath.Join(dir, "other.sock"))
	want := "another strata daemon is using " + root + " (pid " + strconv.Itoa(os.Getpid()) + ")"
	if !errors.Is(err, errdefs.ErrInUse) || errdefs.Message(err) != want {
		t.Fatalf("second daemon: %v, want %q", err, want)
	}

	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatalf("daemon after SIGTERM: %v", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left: %v", err)
	}
	again := daemon(sock)
	waitListening(t, sock, again)
	syscall.Kill(os.Getpid(), syscall.SIGINT)
	if err := <-again; err != nil {
		t.Fatalf("daemon after SIGINT: %v", err)
	}
}

// waitListening waits until the daemon answers on sock, failing if it
// exits first.
func waitListening(t *testing.T, sock string, done chan error) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		select {
		case err := <-done:
			t.Fatalf("daemon exited: %v", err)
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("daemon not listening on %s", sock)
}
