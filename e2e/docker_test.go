package e2e

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dockerd is a real Docker daemon private to one test run.
type dockerd struct {
	host string
	cmd  *exec.Cmd
	dir  string
}

// startDockerd starts dockerd (overlay2) on a socket of its own. The tests
// compare strata with it, so CI installs docker.io and this must not skip.
func startDockerd(t *testing.T) *dockerd {
	t.Helper()
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		t.Fatalf("dockerd is needed to compare with a real Docker (apt-get install docker.io): %v", err)
	}
	dir, err := os.MkdirTemp("/var/tmp", "strata-e2e-docker.")
	if err != nil {
		t.Fatal(err)
	}
	d := &dockerd{host: "unix://" + dir + "/docker.sock", dir: dir}
	d.cmd = exec.Command(bin, "--data-root", dir+"/data", "--exec-root", dir+"/exec",
		"--pidfile", dir+"/docker.pid", "--host", d.host, "--storage-driver", "overlay2",
		"--bridge", "none", "--iptables=false", "--ip-masq=false")
	logf, err := os.Create(dir + "/dockerd.log")
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.stop(); logf.Close() })
	for i := 0; i < 120; i++ {
		if _, err := d.run("info"); err == nil {
			return d
		}
		time.Sleep(500 * time.Millisecond)
	}
	log, _ := os.ReadFile(dir + "/dockerd.log")
	t.Fatalf("dockerd did not start:\n%s", tail(string(log), 2000))
	return nil
}

func (d *dockerd) stop() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
	unmountUnder(d.dir)
	os.RemoveAll(d.dir)
}

// run runs the docker CLI against this daemon.
func (d *dockerd) run(args ...string) (string, error) {
	cmd := exec.Command(dockerCLI(), append([]string{"-H", d.host}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, tail(string(out), 500))
	}
	return string(out), nil
}

// dockerCLI prefers Debian's client, which matches Debian's dockerd.
func dockerCLI() string {
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		return "/usr/bin/docker"
	}
	return "docker"
}

// unmountUnder lazily unmounts every mount below dir, deepest first.
func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], dir) {
			mounts = append(mounts, f[1])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		unix.Unmount(mounts[i], unix.MNT_DETACH)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// entry is what the comparison looks at for one path of a root file system.
type entry struct {
	typ    byte // tar type flag; hard links are TypeReg
	mode   int64
	uid    int
	gid    int
	size   int64
	link   string // symlink target
	xattrs map[string]string
}

func (e entry) String() string {
	return fmt.Sprintf("type %c mode %o owner %d:%d size %d link %q xattrs %v", e.typ, e.mode, e.uid, e.gid, e.size, e.link, e.xattrs)
}

func (e entry) equal(o entry) bool {
	if e.typ != o.typ || e.mode != o.mode || e.uid != o.uid || e.gid != o.gid || e.link != o.link || len(e.xattrs) != len(o.xattrs) {
		return false
	}
	if e.typ == tar.TypeReg && e.size != o.size {
		return false
	}
	for k, v := range e.xattrs {
		if o.xattrs[k] != v {
			return false
		}
	}
	return true
}

// readExport reads a docker export tar into entries by path ("/a/b"), and the
// hard-link pairs it holds.
func readExport(t *testing.T, r io.Reader) (map[string]entry, [][2]string) {
	t.Helper()
	tr := tar.NewReader(r)
	out := map[string]entry{}
	var links [][2]string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, links
		}
		if err != nil {
			t.Fatal(err)
		}
		name := "/" + strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		if name == "/" || name == "/." {
			continue
		}
		e := entry{typ: h.Typeflag, mode: h.Mode & 07777, uid: h.Uid, gid: h.Gid, size: h.Size, xattrs: map[string]string{}}
		switch h.Typeflag {
		case tar.TypeSymlink:
			e.link = h.Linkname
		case tar.TypeLink:
			target := "/" + strings.TrimPrefix(h.Linkname, "./")
			links = append(links, [2]string{name, target})
			e = out[target]
		case tar.TypeRegA:
			e.typ = tar.TypeReg
		}
		for k, v := range h.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				e.xattrs[x] = v
			}
		}
		out[name] = e
	}
}

// readTree walks a mounted root file system into entries by path.
func readTree(t *testing.T, root string) (map[string]entry, map[string]uint64) {
	t.Helper()
	out := map[string]entry{}
	inodes := map[string]uint64{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(p, root)
		if name == "" {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := entry{mode: int64(st.Mode & 07777), uid: int(st.Uid), gid: int(st.Gid), size: fi.Size(), xattrs: xattrs(t, p)}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			e.typ = tar.TypeReg
			inodes[name] = st.Ino
		case unix.S_IFDIR:
			e.typ = tar.TypeDir
		case unix.S_IFLNK:
			e.typ = tar.TypeSymlink
			e.link, _ = os.Readlink(p)
		case unix.S_IFCHR:
			e.typ = tar.TypeChar
		case unix.S_IFBLK:
			e.typ = tar.TypeBlock
		case unix.S_IFIFO:
			e.typ = tar.TypeFifo
		}
		out[name] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, inodes
}

func xattrs(t *testing.T, p string) map[string]string {
	out := map[string]string{}
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return out
	}
	for _, k := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if k == "" || strings.HasPrefix(k, "trusted.overlay.") {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, k, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, k, err)
		}
		out[k] = string(v[:m])
	}
	return out
}

// dockerInit are the paths Docker's init layer adds to every container: a
// docker export shows them, an image does not have them.
var dockerInit = map[string]bool{
	"/.dockerenv": true, "/dev": true, "/dev/console": true, "/dev/pts": true, "/dev/shm": true,
	"/etc/hostname": true, "/etc/hosts": true, "/etc/mtab": true, "/etc/resolv.conf": true,
	"/proc": true, "/sys": true,
}
