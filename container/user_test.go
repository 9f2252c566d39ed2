package container

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-storage/strata/errdefs"
)

func TestLookupUser(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"passwd": "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1001::/home/app:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin\n",
		"group":  "root:x:0:\nstaff:x:50:app\napp:x:1001:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		spec     string
		uid, gid int
	}{
		{"app", 1000, 1001},
		{"1000", 1000, 1001}, // a number that has an entry takes its group
		{"4242", 4242, 0},
		{"app:staff", 1000, 50},
		{"nobody:1001", 65534, 1001},
		{"4242:4343", 4242, 4343},
	} {
		uid, gid, err := lookupUser(root, c.spec)
		if err != nil || uid != c.uid || gid != c.gid {
			t.Errorf("lookupUser(%q) = %d, %d, %v; want %d, %d", c.spec, uid, gid, err, c.uid, c.gid)
		}
	}
	for _, spec := range []string{"ghost", "app:ghosts", "-1"} {
		if _, _, err := lookupUser(root, spec); err == nil {
			t.Errorf("lookupUser(%q) found someone", spec)
		}
	}
	if _, _, err := lookupUser(root, "ghost"); !errors.Is(err, errdefs.ErrInvalid) || errdefs.Message(err) != "unable to find user ghost: no matching entries in passwd file" {
		t.Errorf("lookupUser(ghost): %v", err)
	}
	// Without the files, numbers still work and names do not; a link out
	// of the root stays inside.
	empty := t.TempDir()
	if uid, gid, err := lookupUser(empty, "7:8"); err != nil || uid != 7 || gid != 8 {
		t.Errorf("lookupUser(7:8) without passwd = %d, %d, %v", uid, gid, err)
	}
	if err := os.Symlink("/proc/1/root/etc", filepath.Join(empty, "etc")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := lookupUser(empty, "root"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("lookupUser(root) through a link to the host's /etc: %v, want none", err)
	}
}
