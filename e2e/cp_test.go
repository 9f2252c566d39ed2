package e2e

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestCpEscapes plants symlinks that point out of a container's root (to
// "/", through "../..", absolute links) and copies through them both ways.
// A host directory holds a sentinel whose path also exists in the container:
// every copy must reach the container's file, never the host's, and the host
// directory must come out untouched.
func TestCpEscapes(t *testing.T) {
	dir := images(t)
	root := newRoot(t)
	strata(t, root, "--storage-driver", "overlay", "load", "-q", "-i", filepath.Join(dir, "base.tar"))
	c := strings.TrimSpace(strata(t, root, "create", "base:1"))
	mnt := strings.TrimSpace(strata(t, root, "mount", c))

	sentinel, err := os.MkdirTemp("/var/tmp", "strata-e2e-sentinel.")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(sentinel) })
	const hostSecret, containerSecret = "HOST-SECRET-must-never-be-read\n", "container secret\n"
	must(t, os.WriteFile(filepath.Join(sentinel, "secret"), []byte(hostSecret), 0o644))
	before := snapshot(t, sentinel)
	escape := fmt.Sprintf("strata-e2e-escape-%d", os.Getpid()) // a name that must appear nowhere on the host
	t.Cleanup(func() { os.Remove("/" + escape) })

	// the container: the same sentinel path with other content, its own
	// hostname, and links that would leave its root if followed on the host
	const hostname = "container-hostname\n"
	must(t, os.WriteFile(filepath.Join(mnt, "etc/hostname"), []byte(hostname), 0o644))
	must(t, mkdirs(mnt, sentinel, 0o755))
	must(t, os.WriteFile(filepath.Join(mnt, sentinel, "secret"), []byte(containerSecret), 0o644))
	must(t, mkdirs(mnt, "/deep/er", 0o755))
	for link, target := range map[string]string{
		"/evil":        "/",
		"/etc2":        "/etc",
		"/up":          "../../../..",
		"/deep/er/up":  "../../../../../../..",
		"/abs":         sentinel,
		"/abs-secret":  sentinel + "/secret",
		"/etc/escaper": "../../../../../../..",
	} {
		must(t, os.Symlink(target, filepath.Join(mnt, link)))
	}

	// out of the container, as a tar on stdout
	for path, want := range map[string]string{
		"/evil/etc/hostname":                 hostname,
		"/etc2/hostname":                     hostname,
		"/up/etc/hostname":                   hostname,
		"/etc/escaper/etc/hostname":          hostname,
		"/up" + sentinel + "/secret":         containerSecret,
		"/deep/er/up" + sentinel + "/secret": containerSecret,
		"/abs/secret":                        containerSecret,
		"/../../.." + sentinel + "/secret":   containerSecret,
		"/evil/../.." + sentinel + "/secret": containerSecret,
	} {
		got := cpOut(t, root, c+":"+path)
		if got != want {
			t.Errorf("cp %s: %q, want the container's %q", path, got, want)
		}
	}
	if got := cpOut(t, root, "-L", c+":/abs-secret"); got != containerSecret {
		t.Errorf("cp -L /abs-secret: %q, want the container's %q", got, containerSecret)
	}
	// out of the container, to a host file
	out := filepath.Join(t.TempDir(), "hostname")
	strata(t, root, "cp", c+":/evil/etc/../../up/etc/hostname", out)
	if got, err := os.ReadFile(out); err != nil || string(got) != hostname {
		t.Errorf("cp to a host file: %q, %v; want %q", got, err, hostname)
	}

	// into the container
	src := filepath.Join(t.TempDir(), "payload")
	must(t, os.WriteFile(src, []byte("payload\n"), 0o644))
	for dest, lands := range map[string]string{
		"/evil/" + escape:                  "/" + escape,
		"/up" + sentinel + "/planted":      sentinel + "/planted",
		"/abs/planted2":                    sentinel + "/planted2",
		"/etc/escaper/etc/" + escape:       "/etc/" + escape,
		"/../../.." + sentinel + "/plant3": sentinel + "/plant3",
	} {
		strata(t, root, "cp", src, c+":"+dest)
		if got, err := os.ReadFile(filepath.Join(mnt, lands)); err != nil || string(got) != "payload\n" {
			t.Errorf("cp into %s: the container's %s holds %q, %v", dest, lands, got, err)
		}
	}
	// a hostile tar on stdin: "../" names and an entry through a symlink it
	// plants; strata may refuse it, but nothing may land outside the root
	hostile := tarOf(t,
		&tar.Header{Name: "../../../../" + escape, Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
		&tar.Header{Name: "lnk", Typeflag: tar.TypeSymlink, Linkname: sentinel},
		&tar.Header{Name: "lnk/pwned", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
		&tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: "../../../.." + sentinel + "/secret"},
	)
	cmd := exec.Command(strataBin, "--root", root, "cp", "-", c+":/tmp")
	cmd.Stdin = bytes.NewReader(hostile)
	res, err := cmd.CombinedOutput()
	t.Logf("cp of a hostile tar: %v %s", err, res)
	if got, err := os.ReadFile(filepath.Join(mnt, "tmp/hard")); err == nil && strings.Contains(string(got), "HOST-SECRET") {
		t.Errorf("a hard link in a copied tar reached the host's secret")
	}

	if after := snapshot(t, sentinel); after != before {
		t.Errorf("the host's sentinel dir changed:\n%s\nthen\n%s", before, after)
	}
	for _, p := range []string{"/" + escape, "/etc/" + escape, "/var/" + escape} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("cp wrote %s on the host", p)
		}
	}
	if got, err := os.ReadFile(filepath.Join(mnt, sentinel, "secret")); err != nil || string(got) != containerSecret {
		t.Errorf("the container's sentinel: %q, %v", got, err)
	}
	strata(t, root, "umount", c)
	strata(t, root, "rm", c)
}

// cpOut runs `strata cp [flags] C:PATH -` and returns the content of the one
// regular file of the tar it prints. It fails the test if the output holds
// the host's secret in any form.
func cpOut(t *testing.T, root string, args ...string) string {
	t.Helper()
	out := strata(t, root, append(append([]string{"cp"}, args...), "-")...)
	if strings.Contains(out, "HOST-SECRET") {
		t.Fatalf("cp %v printed the host's secret", args)
	}
	tr := tar.NewReader(strings.NewReader(out))
	var body []byte
	files := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("cp %v: %v", args, err)
		}
		if h.Typeflag == tar.TypeReg {
			files++
			body, _ = io.ReadAll(tr)
		}
	}
	if files != 1 {
		t.Fatalf("cp %v: the tar holds %d files, want 1", args, files)
	}
	return string(body)
}

// tarOf returns a tar of headers, each regular file holding "evil".
func tarOf(t *testing.T, headers ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range headers {
		must(t, tw.WriteHeader(h))
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("evil"))
		}
	}
	must(t, tw.Close())
	return buf.Bytes()
}

// snapshot describes a directory tree: names, modes, sizes and contents.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v %d %v", strings.TrimPrefix(p, dir), fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += " " + string(b)
		}
		lines = append(lines, line)
		return nil
	})
	must(t, err)
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
