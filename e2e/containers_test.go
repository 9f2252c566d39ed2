package e2e

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// strataFails runs strata on root, expecting it to fail, and returns its exit
// code and standard error.
func strataFails(t *testing.T, root string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(strataBin, append([]string{"--root", root}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("strata %s succeeded (err %v), want a failure; printed %s", strings.Join(args, " "), err, out)
	}
	return exit.ExitCode(), stderr.String()
}

// sortedLines returns the non-empty lines of s, sorted.
func sortedLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

// mounted reports whether path is a mount point of this mount namespace.
func mounted(path string) bool {
	data, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == path {
			return true
		}
	}
	return false
}

// mountsUnder lists the mount points below dir.
func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mounts")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			out = append(out, f[1])
		}
	}
	return out
}

// compareEntries lists how two sets of entries and hard links differ.
func compareEntries(wantName, gotName string, want, got map[string]entry, wantLinks, gotLinks [][2]string) []string {
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("only in %s: %s %v", wantName, p, w))
		case !g.equal(w):
			diffs = append(diffs, fmt.Sprintf("%s: %s %v, %s %v", p, gotName, g, wantName, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("only in %s: %s %v", gotName, p, g))
		}
	}
	if a, b := linkSet(wantLinks), linkSet(gotLinks); !equalSets(a, b) {
		diffs = append(diffs, fmt.Sprintf("hard links: %s %v, %s %v", gotName, b, wantName, a))
	}
	sort.Strings(diffs)
	return diffs
}

// linkSet names each hard link pair independently of which of the two names
// a tar writer happened to meet first.
func linkSet(links [][2]string) []string {
	var out []string
	for _, l := range links {
		a, b := l[0], l[1]
		if b < a {
			a, b = b, a
		}
		out = append(out, a+" = "+b)
	}
	sort.Strings(out)
	return out
}

func equalSets(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

// saveTopLayer reads a save archive of one image (docker's or strata's) and
// returns the entries and hard links of the image's last layer.
func saveTopLayer(t *testing.T, archive string) (map[string]entry, [][2]string) {
	t.Helper()
	var manifest []struct{ Layers []string }
	eachTarFile(t, archive, func(name string, r io.Reader) bool {
		if name != "manifest.json" {
			return false
		}
		if err := json.NewDecoder(r).Decode(&manifest); err != nil {
			t.Fatal(err)
		}
		return true
	})
	if len(manifest) != 1 || len(manifest[0].Layers) == 0 {
		t.Fatalf("%s: manifest.json %+v, want one image with layers", archive, manifest)
	}
	top := manifest[0].Layers[len(manifest[0].Layers)-1]
	var entries map[string]entry
	var links [][2]string
	eachTarFile(t, archive, func(name string, r io.Reader) bool {
		if name != top {
			return false
		}
		entries, links = readExport(t, r)
		return true
	})
	if entries == nil {
		t.Fatalf("%s: layer %s missing", archive, top)
	}
	return entries, links
}

// eachTarFile calls fn on the regular files of a tar until fn returns true.
func eachTarFile(t *testing.T, path string, fn func(name string, r io.Reader) bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && fn(h.Name, tr) {
			return
		}
	}
}

// lifecycleDiff is what `diff` must list after applyLifecycleChanges in a
// container of base:1 (Debian): the parents of changes are listed as C, as
// Docker does.
var lifecycleDiff = []string{
	"A /etc/issue.old", // rename of a lower file
	"A /root/motd.sym",
	"A /root/new.hard",
	"A /root/new.txt",
	"A /srv/a",
	"A /srv/a/b",
	"A /srv/a/b/c",
	"C /etc",
	"C /etc/motd",    // overwritten
	"C /etc/profile", // chmod
	"C /root",
	"C /srv",
	"C /usr",
	"C /usr/share",
	"D /etc/issue",
	"D /etc/issue.net",
	"D /usr/share/common-licenses",
}

func applyLifecycleChanges(t *testing.T, mnt string) {
	t.Helper()
	p := func(name string) string { return filepath.Join(mnt, name) }
	must(t, os.WriteFile(p("/root/new.txt"), []byte("new\n"), 0o644))
	must(t, os.Link(p("/root/new.txt"), p("/root/new.hard")))
	must(t, os.WriteFile(p("/etc/motd"), []byte("changed in the container\n"), 0o644))
	must(t, os.Remove(p("/etc/issue.net")))
	must(t, os.RemoveAll(p("/usr/share/common-licenses")))
	must(t, os.Rename(p("/etc/issue"), p("/etc/issue.old")))
	must(t, os.Chmod(p("/etc/profile"), 0o600))
	must(t, os.Symlink("/etc/motd", p("/root/motd.sym")))
	must(t, mkdirs(mnt, "/srv/a/b/c", 0o755))
}

// checkLifecycleChanges checks that a root file system holds the edits.
func checkLifecycleChanges(t *testing.T, mnt string) {
	t.Helper()
	p := func(name string) string { return filepath.Join(mnt, name) }
	for name, want := range map[string]string{"/root/new.txt": "new\n", "/root/new.hard": "new\n", "/etc/motd": "changed in the container\n"} {
		if got, err := os.ReadFile(p(name)); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", name, got, err, want)
		}
	}
	for _, gone := range []string{"/etc/issue", "/etc/issue.net", "/usr/share/common-licenses"} {
		if _, err := os.Lstat(p(gone)); !os.IsNotExist(err) {
			t.Errorf("%s still there (%v)", gone, err)
		}
	}
	if _, err := os.Stat(p("/etc/issue.old")); err != nil {
		t.Error(err)
	}
	if fi, err := os.Stat(p("/etc/profile")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("/etc/profile: %v %v, want mode 0600", fi, err)
	}
	if target, err := os.Readlink(p("/root/motd.sym")); err != nil || target != "/etc/motd" {
		t.Errorf("/root/motd.sym -> %q, %v", target, err)
	}
	if fi, err := os.Stat(p("/srv/a/b/c")); err != nil || !fi.IsDir() {
		t.Errorf("/srv/a/b/c: %v", err)
	}
	a, errA := os.Stat(p("/root/new.txt"))
	b, errB := os.Stat(p("/root/new.hard"))
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Errorf("/root/new.hard is not a hard link of /root/new.txt (%v %v)", errA, errB)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// mkdirs makes each missing directory of dir (a path inside root) with mode,
// whatever the umask, as `mkdir -p` does in a container.
func mkdirs(root, dir string, mode os.FileMode) error {
	p := root
	for _, part := range strings.Split(strings.Trim(dir, "/"), "/") {
		p = filepath.Join(p, part)
		if err := os.Mkdir(p, mode); os.IsExist(err) {
			continue
		} else if err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
	}
	return nil
}

var fullID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// TestContainerLifecycle runs a container of base:1 through its whole life on
// each driver: create, mount, edits, diff, commit, a container of the commit,
// export, ps, umount and rm, with the refusals in between.
func TestContainerLifecycle(t *testing.T) {
	dir := images(t)
	for _, drv := range []string{"vfs", "overlay"} {
		t.Run(drv, func(t *testing.T) {
			root := newRoot(t)
			s := func(args ...string) string {
				t.Helper()
				return strings.TrimSpace(strata(t, root, append([]string{"--storage-driver", drv}, args...)...))
			}
			fails := func(args ...string) (int, string) {
				t.Helper()
				return strataFails(t, root, append([]string{"--storage-driver", drv}, args...)...)
			}
			s("load", "-q", "-i", filepath.Join(dir, "base.tar"))

			id := s("create", "--name", "life", "base:1")
			if !fullID.MatchString(id) {
				t.Fatalf("create printed %q, want a 64-hex id", id)
			}
			if code, msg := fails("create", "--name", "life", "base:1"); code != 3 {
				t.Errorf("second container named life: exit %d (%s), want 3 (exists)", code, msg)
			}
			mnt := s("mount", "life")
			if again := s("mount", id[:12]); again != mnt {
				t.Fatalf("second mount at %s, first at %s", again, mnt)
			}
			if drv == "overlay" && !mounted(mnt) {
				t.Fatalf("%s is not mounted", mnt)
			}
			if target, err := os.Readlink(filepath.Join(mnt, "etc/mtab")); err != nil || target != "/proc/mounts" {
				t.Errorf("init layer: /etc/mtab -> %q, %v", target, err)
			}
			for _, f := range []string{".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "dev/console"} {
				if fi, err := os.Stat(filepath.Join(mnt, f)); err != nil || fi.Size() != 0 {
					t.Errorf("init layer: /%s: %v", f, err)
				}
			}
			if out := s("diff", "life"); out != "" {
				t.Fatalf("diff of a fresh container:\n%s", out)
			}

			applyLifecycleChanges(t, mnt)
			if got := sortedLines(s("diff", "life")); !equalSets(got, lifecycleDiff) {
				t.Fatalf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(lifecycleDiff, "\n"))
			}

			img := s("commit", "-m", "lifecycle edits", "-a", "e2e <e2e@example.com>", "life", "life:2")
			if !strings.HasPrefix(img, "sha256:") {
				t.Fatalf("commit printed %q", img)
			}
			var inspect []struct {
				ID      string `json:"Id"`
				Author  string
				Comment string
				RootFS  struct{ Layers []string }
			}
			must(t, json.Unmarshal([]byte(s("image", "inspect", "life:2")), &inspect))
			if inspect[0].ID != img || inspect[0].Author != "e2e <e2e@example.com>" || inspect[0].Comment != "lifecycle edits" || len(inspect[0].RootFS.Layers) != 2 {
				t.Errorf("image inspect life:2: %+v", inspect[0])
			}

			s("create", "--name", "life2", "life:2")
			mnt2 := s("mount", "life2")
			checkLifecycleChanges(t, mnt2)
			if out := s("diff", "life2"); out != "" {
				t.Errorf("diff of a container of the commit:\n%s", out)
			}
			// the committed layer holds the edits and none of the init layer's files
			saved := filepath.Join(t.TempDir(), "life2.tar")
			s("save", "-o", saved, "life:2")
			layer, _ := saveTopLayer(t, saved)
			for _, p := range []string{"/.dockerenv", "/etc/hostname", "/etc/mtab", "/dev/console"} {
				if _, ok := layer[p]; ok {
					t.Errorf("committed layer holds the init layer's %s", p)
				}
			}
			if _, ok := layer["/root/new.txt"]; !ok {
				t.Errorf("committed layer lacks /root/new.txt")
			}

			export := filepath.Join(t.TempDir(), "export.tar")
			s("export", "-o", export, "life")
			f, err := os.Open(export)
			must(t, err)
			exported, links := readExport(t, f)
			f.Close()
			tree, inodes := readTree(t, mnt)
			if diffs := compareEntries("mount", "export", tree, exported, nil, nil); len(diffs) > 0 {
				t.Errorf("export differs from the mounted tree in %d entries, e.g.:\n%s", len(diffs), strings.Join(diffs[:min(len(diffs), 20)], "\n"))
			}
			if !strings.Contains(strings.Join(linkSet(links), "\n"), "/root/new.hard = /root/new.txt") {
				t.Errorf("export lost the hard link /root/new.hard: %v", linkSet(links))
			}
			for _, l := range links {
				if inodes[l[0]] == 0 || inodes[l[0]] != inodes[l[1]] {
					t.Errorf("export has a hard link %s -> %s the tree does not have", l[0], l[1])
				}
			}

			ps := s("ps", "-a", "--size") // -s is the global --storage-driver
			for _, name := range []string{"life", "life2"} {
				if !psHasSize(ps, name) {
					t.Errorf("ps -a --size has no size for %s:\n%s", name, ps)
				}
			}
			if q := sortedLines(s("ps", "-a", "-q")); len(q) != 2 || !strings.HasPrefix(id, q[0]) && !strings.HasPrefix(id, q[1]) {
				t.Errorf("ps -a -q: %v", q)
			}

			// refusals: a mounted container, an image a container uses
			if code, msg := fails("rm", "life"); code != 3 {
				t.Errorf("rm of a mounted container: exit %d (%s), want 3 (in use)", code, msg)
			}
			if code, msg := fails("rmi", "base:1"); code != 3 {
				t.Errorf("rmi of an image in use: exit %d (%s), want 3 (in use)", code, msg)
			}
			if code, msg := fails("rmi", "life:2"); code != 3 {
				t.Errorf("rmi of a committed image in use: exit %d (%s), want 3 (in use)", code, msg)
			}

			// two mounts of life: the first umount keeps it mounted
			s("umount", "life")
			if drv == "overlay" && !mounted(mnt) {
				t.Errorf("%s unmounted while a second mount holds it", mnt)
			}
			if _, err := os.Stat(filepath.Join(mnt, "root/new.txt")); err != nil {
				t.Errorf("after one of two umounts: %v", err)
			}
			s("umount", "life2")
			if drv == "overlay" && mounted(mnt2) {
				t.Errorf("%s still mounted after umount", mnt2)
			}
			s("rm", "life2")
			s("rm", "-f", "life")
			if out := s("ps", "-a", "-q"); out != "" {
				t.Errorf("containers left: %s", out)
			}
			if m := mountsUnder(root); len(m) > 0 {
				t.Errorf("mounts left: %v", m)
			}
			s("rmi", "life:2")
			s("rmi", "base:1")
			if out := s("images", "--tree"); out != "" {
				t.Errorf("layers left:\n%s", out)
			}
			assertNoDriverLayers(t, root, drv)
		})
	}
}

// assertNoDriverLayers fails if the driver still holds layers.
func assertNoDriverLayers(t *testing.T, root, drv string) {
	t.Helper()
	dir := filepath.Join(root, drv)
	if drv == "vfs" {
		dir = filepath.Join(dir, "dir")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "l" && !strings.HasPrefix(e.Name(), ".") {
			t.Errorf("driver layer left behind: %s", e.Name())
		}
	}
}

// psHasSize reports whether the ps line of container name shows its size as
// Docker does: "12.3kB (virtual 180MB)".
func psHasSize(ps, name string) bool {
	size := regexp.MustCompile(`[0-9.]+ ?[kMG]?B \(virtual [0-9.]+ ?[kMG]?B\)`)
	for _, line := range strings.Split(ps, "\n") {
		for _, f := range strings.Fields(line) {
			if f == name && size.MatchString(line) {
				return true
			}
		}
	}
	return false
}
