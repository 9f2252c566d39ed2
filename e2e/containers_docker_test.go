package e2e

import (
	"archive/tar"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// addedFile is one entry that both `docker cp` (as an entry of a tar) and a
// write into a mounted strata container can make.
type addedFile struct {
	path     string
	typ      byte // tar.TypeReg, TypeDir, TypeSymlink or TypeLink
	mode     int64
	uid, gid int
	body     string
	link     string // symlink target, or the path a hard link joins
}

// addedFiles are the additions and overwrites made in app:1 (a Debian with
// 20k small files under /data/small), new and existing directories alike.
var addedFiles = []addedFile{
	{path: "/etc/strata.conf", typ: tar.TypeReg, mode: 0o644, body: "added by the test\n"},
	{path: "/etc/debian_version", typ: tar.TypeReg, mode: 0o644, body: "overwritten by the test\n"},
	{path: "/data/small/d000/f00001.txt", typ: tar.TypeReg, mode: 0o644, body: strings.Repeat("rewritten ", 100)},
	{path: "/data/small/d050/new.txt", typ: tar.TypeReg, mode: 0o600, body: "new in a lower dir\n"},
	{path: "/opt/app", typ: tar.TypeDir, mode: 0o755},
	{path: "/opt/app/conf", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
	{path: "/opt/app/conf/app.ini", typ: tar.TypeReg, mode: 0o640, uid: 1000, gid: 1000, body: "key = value\n"},
	{path: "/opt/app/empty", typ: tar.TypeReg, mode: 0o644},
	{path: "/opt/app/big.bin", typ: tar.TypeReg, mode: 0o755, body: strings.Repeat("0123456789abcdef", 1<<16)},
	{path: "/opt/app/big.link", typ: tar.TypeLink, mode: 0o755, link: "/opt/app/big.bin"},
	{path: "/opt/app/current", typ: tar.TypeSymlink, mode: 0o777, link: "conf"},
	{path: "/etc/strata.sym", typ: tar.TypeSymlink, mode: 0o777, link: "/opt/app/conf/app.ini"},
}

// addedDiff is what `diff` lists after addedFiles.
var addedDiff = []string{
	"A /data/small/d050/new.txt", "A /etc/strata.conf", "A /etc/strata.sym", "A /opt/app",
	"A /opt/app/big.bin", "A /opt/app/big.link", "A /opt/app/conf", "A /opt/app/conf/app.ini",
	"A /opt/app/current", "A /opt/app/empty",
	"C /data", "C /data/small", "C /data/small/d000", "C /data/small/d000/f00001.txt", "C /data/small/d050",
	"C /etc", "C /etc/debian_version", "C /opt",
}

// addedTar is addedFiles as the tar `docker cp - C:/` extracts.
func addedTar(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, f := range addedFiles {
		h := &tar.Header{Name: f.path[1:], Typeflag: f.typ, Mode: f.mode, Uid: f.uid, Gid: f.gid, ModTime: now, Size: int64(len(f.body))}
		switch f.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeSymlink:
			h.Linkname = f.link
		case tar.TypeLink:
			h.Linkname = f.link[1:]
		}
		must(t, tw.WriteHeader(h))
		_, err := tw.Write([]byte(f.body))
		must(t, err)
	}
	must(t, tw.Close())
	return buf.Bytes()
}

// writeAddedFiles makes addedFiles in a mounted root file system.
func writeAddedFiles(t *testing.T, mnt string) {
	t.Helper()
	for _, f := range addedFiles {
		p := filepath.Join(mnt, f.path)
		switch f.typ {
		case tar.TypeReg:
			must(t, os.WriteFile(p, []byte(f.body), os.FileMode(f.mode)))
			must(t, os.Chmod(p, os.FileMode(f.mode)))
		case tar.TypeDir:
			must(t, os.Mkdir(p, os.FileMode(f.mode)))
			must(t, os.Chmod(p, os.FileMode(f.mode)))
		case tar.TypeSymlink:
			must(t, os.Symlink(f.link, p))
		case tar.TypeLink:
			must(t, os.Link(filepath.Join(mnt, f.link), p))
			continue
		}
		must(t, os.Lchown(p, f.uid, f.gid))
	}
}

// scriptedEdits are the changes `docker cp` cannot make: each as a shell
// command that runs in a Docker container, and as the same edit made in a
// mounted strata container.
var scriptedEdits = []struct {
	sh    string
	apply func(root string) error
}{
	{"rm /etc/issue", func(r string) error { return os.Remove(r + "/etc/issue") }},
	{"rm -r /data/small/d001", func(r string) error { return os.RemoveAll(r + "/data/small/d001") }},
	{"mv /data/small/d002/f00007.txt /data/renamed.txt", func(r string) error {
		return os.Rename(r+"/data/small/d002/f00007.txt", r+"/data/renamed.txt")
	}},
	{"chmod 600 /etc/profile", func(r string) error { return os.Chmod(r+"/etc/profile", 0o600) }},
	{"chmod 700 /data/small/d003", func(r string) error { return os.Chmod(r+"/data/small/d003", 0o700) }},
	{"chown 1000:1000 /etc/shells", func(r string) error { return os.Lchown(r+"/etc/shells", 1000, 1000) }},
	{"ln /etc/group /etc/group.hard", func(r string) error { return os.Link(r+"/etc/group", r+"/etc/group.hard") }},
	{"ln -s passwd /etc/pw.sym", func(r string) error { return os.Symlink("passwd", r+"/etc/pw.sym") }},
	{"mkdir -p /srv/a/b/c", func(r string) error { return mkdirs(r, "/srv/a/b/c", 0o755) }},
	{"rm /opt/app/empty", func(r string) error { return os.Remove(r + "/opt/app/empty") }},
}

// finalDiff is what `diff` lists after addedFiles and scriptedEdits: the file
// added then removed is gone without a trace, a rename is a D and an A.
var finalDiff = []string{
	"A /data/renamed.txt", "A /data/small/d050/new.txt", "A /etc/group.hard", "A /etc/pw.sym",
	"A /etc/strata.conf", "A /etc/strata.sym", "A /opt/app", "A /opt/app/big.bin", "A /opt/app/big.link",
	"A /opt/app/conf", "A /opt/app/conf/app.ini", "A /opt/app/current", "A /srv/a", "A /srv/a/b", "A /srv/a/b/c",
	"C /data", "C /data/small", "C /data/small/d000", "C /data/small/d000/f00001.txt", "C /data/small/d002",
	"C /data/small/d003", "C /data/small/d050", "C /etc", "C /etc/debian_version", "C /etc/profile",
	"C /etc/shells", "C /opt", "C /srv",
	"D /data/small/d001", "D /data/small/d002/f00007.txt", "D /etc/issue",
}

// TestContainerChangesMatchDocker makes the same changes in a Docker
// container and in a strata container (overlay) of app:1 and compares what
// both report: `diff`, then the layer tar that `commit` makes. Docker gets
// its additions through `docker cp` and the rest from a shell script that
// `docker start` runs; where the machine cannot start containers, the
// scripted edits are checked against finalDiff only.
func TestContainerChangesMatchDocker(t *testing.T) {
	dir := images(t)
	d := startDockerd(t)
	if _, err := d.run("load", "-i", filepath.Join(dir, "app.tar")); err != nil {
		t.Fatal(err)
	}
	var script []string
	for _, e := range scriptedEdits {
		script = append(script, e.sh)
	}
	out, err := d.run("create", "app:1", "sh", "-ec", strings.Join(script, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	cid := strings.TrimSpace(out)

	root := newRoot(t)
	strata(t, root, "--storage-driver", "overlay", "load", "-q", "-i", filepath.Join(dir, "app.tar"))
	sid := strings.TrimSpace(strata(t, root, "create", "app:1"))
	mnt := strings.TrimSpace(strata(t, root, "mount", sid))

	cp := exec.Command(dockerCLI(), "-H", d.host, "cp", "-", cid+":/")
	cp.Stdin = bytes.NewReader(addedTar(t))
	if out, err := cp.CombinedOutput(); err != nil {
		t.Fatalf("docker cp: %v: %s", err, out)
	}
	writeAddedFiles(t, mnt)
	compareDiffs(t, d, cid, root, sid, addedDiff)

	_, startErr := d.run("start", "-a", cid)
	if startErr == nil {
		applyScriptedEdits(t, mnt)
		compareDiffs(t, d, cid, root, sid, finalDiff)
	} else {
		t.Logf("docker cannot start containers here, so only the additions are compared with Docker: %v", startErr)
	}

	// commit both in the same state, then compare the new layers' entries
	if _, err := d.run("commit", cid, "docker-commit:1"); err != nil {
		t.Fatal(err)
	}
	strata(t, root, "commit", sid, "strata-commit:1")
	dockerSave := filepath.Join(d.dir, "commit.tar")
	if _, err := d.run("save", "-o", dockerSave, "docker-commit:1"); err != nil {
		t.Fatal(err)
	}
	strataSave := filepath.Join(root, "commit.tar")
	strata(t, root, "save", "-o", strataSave, "strata-commit:1")
	want, wantLinks := saveTopLayer(t, dockerSave)
	got, gotLinks := saveTopLayer(t, strataSave)
	if diffs := compareEntries("docker", "strata", want, got, wantLinks, gotLinks); len(diffs) > 0 {
		t.Errorf("committed layers differ in %d entries:\n%s", len(diffs), strings.Join(diffs, "\n"))
	}
	t.Logf("committed layers: %d entries, %d hard links alike", len(want), len(wantLinks))

	if startErr != nil {
		applyScriptedEdits(t, mnt)
	}
	if got := sortedLines(strata(t, root, "diff", sid)); !equalSets(got, finalDiff) {
		t.Errorf("strata diff after every edit:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(finalDiff, "\n"))
	}
	strata(t, root, "umount", sid)
	strata(t, root, "rm", sid)
}

func applyScriptedEdits(t *testing.T, mnt string) {
	t.Helper()
	for _, e := range scriptedEdits {
		if err := e.apply(mnt); err != nil {
			t.Fatalf("%s: %v", e.sh, err)
		}
	}
}

// compareDiffs checks that `docker diff` and `strata diff` list the same
// changes (in any order: Docker's is a map walk), and that they are want.
func compareDiffs(t *testing.T, d *dockerd, cid, root, sid string, want []string) {
	t.Helper()
	out, err := d.run("diff", cid)
	if err != nil {
		t.Fatal(err)
	}
	docker := sortedLines(out)
	got := sortedLines(strata(t, root, "diff", sid))
	if !equalSets(got, docker) {
		t.Errorf("strata diff:\n%s\ndocker diff:\n%s", strings.Join(got, "\n"), strings.Join(docker, "\n"))
	}
	if !equalSets(docker, want) {
		t.Errorf("docker diff:\n%s\nthe test expects:\n%s", strings.Join(docker, "\n"), strings.Join(want, "\n"))
	}
}
