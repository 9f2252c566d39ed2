package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// dockerClient is one docker CLI binary pointed at one daemon socket.
type dockerClient struct {
	bin, sock string
}

// old reports whether this is Debian's 20.10 CLI, which prints some daemon
// errors its own way ("Error: No such image: x").
func (c dockerClient) old() bool { return c.bin == dockerOld }

// ok runs the CLI and returns its standard output, failing the test when it
// exits non-zero.
func (c dockerClient) ok(t *testing.T, args ...string) string {
	t.Helper()
	return c.okIn(t, nil, args...)
}

func (c dockerClient) okIn(t *testing.T, stdin io.Reader, args ...string) string {
	t.Helper()
	out, errOut, code := runDocker(t, c.bin, c.sock, stdin, args...)
	if code != 0 {
		t.Fatalf("docker %s: exit %d\n%s%s", strings.Join(args, " "), code, tail(out, 1000), tail(errOut, 2000))
	}
	return out
}

// fails runs the CLI, expecting a failure, and returns its standard error.
func (c dockerClient) fails(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runDocker(t, c.bin, c.sock, nil, args...)
	if code == 0 {
		t.Errorf("docker %s succeeded, want a failure; printed %s", strings.Join(args, " "), tail(out, 500))
	}
	return errOut
}

// hasLine reports whether one line of s is exactly want.
func hasLine(s, want string) bool {
	return slices.Contains(strings.Split(strings.TrimSpace(s), "\n"), want)
}

// TestDaemonCLI drives one strata daemon with the real docker CLIs, 28.2
// (API 1.50) then Debian's 20.10 (API 1.41), through every storage command,
// checks what they print against what the strata CLI sees on the same root,
// and loads what the daemon saves into a real dockerd.
func TestDaemonCLI(t *testing.T) {
	dir := images(t)
	d := launchDaemon(t, newRoot(t))
	var clients []dockerClient
	for _, bin := range []string{dockerNew, dockerOld} {
		if _, err := os.Stat(bin); err == nil {
			clients = append(clients, dockerClient{bin: bin, sock: d.sock})
		}
	}
	if len(clients) == 0 {
		t.Fatal("no docker CLI: apt-get install docker.io")
	}
	for i, c := range clients {
		t.Run(map[string]string{dockerNew: "docker28-api1.50", dockerOld: "docker20-api1.41"}[c.bin], func(t *testing.T) {
			s := &cliSuite{c: c, p: fmt.Sprintf("s%d", i), images: dir, root: d.root, first: i == 0}
			s.run(t)
		})
	}
	t.Run("sigterm-releases-mounts", func(t *testing.T) { testSigtermReleasesMounts(t, d, dir) })
}

// cliSuite is the storage commands of one CLI, in an order where each step
// uses what the ones before made. Names carry the prefix p so that the
// suites of the two CLIs do not meet.
type cliSuite struct {
	c      dockerClient
	p      string
	images string
	root   string
	first  bool // the first suite also loads its save into a real dockerd

	imageID   string // base:1
	ctr       string // the container the steps edit
	ctrID     string
	committed string // its commit's image ID
}

func (s *cliSuite) run(t *testing.T) {
	steps := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"load", s.load}, {"images", s.listImages}, {"image-inspect", s.inspectImage},
		{"history", s.history}, {"tag", s.tag}, {"create", s.create}, {"ps", s.ps},
		{"container-inspect", s.inspectContainer}, {"cp-in", s.cpIn}, {"cp-out", s.cpOut},
		{"diff", s.diff}, {"export", s.export}, {"commit", s.commit}, {"inspect", s.genericInspect},
		{"system-df", s.systemDF}, {"info", s.info}, {"version", s.version}, {"save", s.save},
		{"pull", s.pull}, {"errors", s.errors}, {"rmi-conflict", s.rmiConflict}, {"rm", s.rm},
		{"rmi", s.rmi},
	}
	for _, step := range steps {
		if !t.Run(step.name, step.fn) && s.imageID == "" {
			t.Fatal("nothing loaded: the other steps cannot run")
		}
	}
}

// load loads base.tar with -i (28.2) or on standard input (20.10), and a
// corrupt archive whose error the CLI must print and exit 1 on.
func (s *cliSuite) load(t *testing.T) {
	archive := filepath.Join(s.images, "base.tar")
	var out string
	if s.c.old() {
		f, err := os.Open(archive)
		must(t, err)
		defer f.Close()
		out = s.c.okIn(t, f, "load")
	} else {
		out = s.c.ok(t, "load", "-i", archive)
	}
	if !hasLine(out, "Loaded image: base:1") {
		t.Errorf("load printed %q, want the line Loaded image: base:1", out)
	}
	s.imageID = strings.TrimSpace(s.c.ok(t, "image", "inspect", "--format", "{{.Id}}", "base:1"))
	if !imageIDPattern.MatchString(s.imageID) {
		t.Fatalf("image inspect base:1: Id %q", s.imageID)
	}

	tiny := filepath.Join(t.TempDir(), "tiny.tar")
	writeArchive(t, tiny, map[string][][]byte{s.p + "-tiny:1": {layerTar(t, map[string]string{"tiny": "tiny\n"})}})
	if out := s.c.ok(t, "load", "-q", "-i", tiny); strings.TrimSpace(out) != "Loaded image: "+s.p+"-tiny:1" {
		t.Errorf("load -q printed %q", out)
	}
	s.c.ok(t, "rmi", s.p+"-tiny:1")

	broken := corruptArchive(t, s.p+"-broken:1")
	// the error comes in the JSON stream, after the progress: the CLI
	// prints it as the daemon's, not as a broken connection
	if msg := s.c.fails(t, "load", "-i", broken); !strings.HasPrefix(msg, "Error response from daemon: ") || !strings.Contains(msg, "digest") {
		t.Errorf("load of a corrupt archive printed %q, want the daemon's digest mismatch", msg)
	}
	if out := s.c.ok(t, "images", "-q", s.p+"-broken"); out != "" {
		t.Errorf("the corrupt archive left an image: %s", out)
	}
}

// corruptArchive writes a one-layer archive whose layer does not have the
// diff ID its config names.
func corruptArchive(t *testing.T, tag string) string {
	t.Helper()
	layer := layerTar(t, map[string]string{"hello.txt": "hello, strata\n"})
	good := filepath.Join(t.TempDir(), "good.tar")
	writeArchive(t, good, map[string][][]byte{tag: {layer}})
	bad := filepath.Join(t.TempDir(), "corrupt.tar")
	in, err := os.Open(good)
	must(t, err)
	defer in.Close()
	var buf bytes.Buffer
	tr, tw := tar.NewReader(in), tar.NewWriter(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		body, err := io.ReadAll(tr)
		must(t, err)
		if h.Name == "blobs/sha256/"+sha(layer) {
			body[512] ^= 0xff // the file's first content byte
		}
		must(t, tw.WriteHeader(h))
		_, err = tw.Write(body)
		must(t, err)
	}
	must(t, tw.Close())
	must(t, os.WriteFile(bad, buf.Bytes(), 0o644))
	return bad
}

func (s *cliSuite) listImages(t *testing.T) {
	out := s.c.ok(t, "images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
	if !hasLine(out, "base:1 "+s.imageID) {
		t.Errorf("images:\n%s\nwant the line base:1 %s", out, s.imageID)
	}
	// the CLI on the same root, while the daemon runs, sees the same IDs
	if got, want := sortedLines(s.c.ok(t, "images", "-q", "--no-trunc")), sortedLines(strata(t, s.root, "images", "-q", "--no-trunc")); !slices.Equal(got, want) {
		t.Errorf("docker images -q: %v; strata images -q: %v", got, want)
	}
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"--filter", "reference=base"}, true},
		{[]string{"--filter", "reference=base:1"}, true},
		{[]string{"--filter", "reference=ba*"}, true},
		{[]string{"--filter", "reference=base:2"}, false},
		{[]string{"--filter", "reference=nosuch"}, false},
		{[]string{"base"}, true},
		{[]string{"docker.io/library/base:1"}, false}, // as dockerd: the pattern matches the familiar name
		{[]string{"nosuch"}, false},
	} {
		args := append([]string{"images", "-q", "--no-trunc"}, c.args...)
		got := strings.TrimSpace(s.c.ok(t, args...))
		if c.want && got != s.imageID || !c.want && got != "" {
			t.Errorf("docker %s printed %q, want %v", strings.Join(args, " "), got, c.want)
		}
	}
	if header := strings.SplitN(s.c.ok(t, "images"), "\n", 2)[0]; !strings.HasPrefix(header, "REPOSITORY") {
		t.Errorf("images header %q", header)
	}
}

// imageInspect is the part of GET /images/X/json the tests look at.
type imageInspect struct {
	ID           string `json:"Id"`
	RepoTags     []string
	RepoDigests  []string
	Parent       string
	Comment      string
	Author       string
	Created      string
	Architecture string
	Os           string
	Size         int64
	Config       struct {
		Cmd []string
		Env []string
	}
	GraphDriver struct{ Name string }
	RootFS      struct {
		Type   string
		Layers []string
	}
}

func (s *cliSuite) inspectImage(t *testing.T) {
	var got []imageInspect
	must(t, json.Unmarshal([]byte(s.c.ok(t, "image", "inspect", "base:1")), &got))
	var want []imageInspect
	must(t, json.Unmarshal([]byte(strata(t, s.root, "image", "inspect", "base:1")), &want))
	if len(got) != 1 || len(want) != 1 {
		t.Fatalf("image inspect: %d docker, %d strata entries", len(got), len(want))
	}
	g := got[0]
	if g.ID != want[0].ID || !slices.Equal(g.RootFS.Layers, want[0].RootFS.Layers) || g.RootFS.Type != "layers" {
		t.Errorf("docker image inspect %+v\nstrata image inspect %+v", g, want[0])
	}
	if !slices.Contains(g.RepoTags, "base:1") || g.RepoDigests == nil || g.Os != "linux" || g.Architecture == "" ||
		g.Created == "" || g.Size <= 0 || g.GraphDriver.Name == "" || len(g.RootFS.Layers) != 1 {
		t.Errorf("image inspect base:1: %+v", g)
	}
	// the same image by short ID, full ID and the ID's digest form
	for _, ref := range []string{s.imageID[7:19], s.imageID[7:], s.imageID} {
		if id := strings.TrimSpace(s.c.ok(t, "image", "inspect", "--format", "{{.Id}}", ref)); id != s.imageID {
			t.Errorf("image inspect %s: %s", ref, id)
		}
	}
}

func (s *cliSuite) history(t *testing.T) {
	out := s.c.ok(t, "history", "--no-trunc", "--format", "{{.ID}}|{{.Size}}|{{.CreatedBy}}", "base:1")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 1 || !strings.HasPrefix(lines[0], s.imageID+"|") {
		t.Errorf("history base:1:\n%s\nwant the first line for %s", out, s.imageID)
	}
}

func (s *cliSuite) tag(t *testing.T) {
	s.c.ok(t, "tag", "base:1", s.p+"-tagged:v1")
	deep := "localhost:5000/" + s.p + "/deep/name:v2"
	s.c.ok(t, "tag", s.imageID[7:19], deep)
	for _, ref := range []string{s.p + "-tagged:v1", deep, "docker.io/library/" + s.p + "-tagged:v1"} {
		if id := strings.TrimSpace(s.c.ok(t, "image", "inspect", "--format", "{{.Id}}", ref)); id != s.imageID {
			t.Errorf("image inspect %s: %q, want %s", ref, id, s.imageID)
		}
	}
	tags := s.c.ok(t, "image", "inspect", "--format", "{{json .RepoTags}}", "base:1")
	for _, want := range []string{`"base:1"`, `"` + s.p + `-tagged:v1"`, `"` + deep + `"`} {
		if !strings.Contains(tags, want) {
			t.Errorf("RepoTags %s lacks %s", tags, want)
		}
	}
	// tagging again onto the same name moves nothing and succeeds
	s.c.ok(t, "tag", "base:1", s.p+"-tagged:v1")
	if msg := s.c.fails(t, "tag", "nosuch", s.p+"-x"); !hasLine(msg, "Error response from daemon: No such image: nosuch:latest") {
		t.Errorf("tag nosuch: %q", msg)
	}
}

// imageIDPattern is an image ID as the API prints it.
var imageIDPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func (s *cliSuite) create(t *testing.T) {
	s.ctr = s.p + "-edit"
	s.ctrID = strings.TrimSpace(s.c.ok(t, "create", "--name", s.ctr, "base:1"))
	if !fullID.MatchString(s.ctrID) {
		t.Fatalf("create printed %q, want a 64-hex ID", s.ctrID)
	}
	// by image ID, no name
	byID := strings.TrimSpace(s.c.ok(t, "create", s.imageID[7:19]))
	if !fullID.MatchString(byID) {
		t.Errorf("create by image ID printed %q", byID)
	} else {
		s.c.ok(t, "rm", byID[:12])
	}
	msg := s.c.fails(t, "create", "--name", s.ctr, "base:1")
	want := fmt.Sprintf(`Error response from daemon: Conflict. The container name "/%s" is already in use by container "%s". You have to remove (or rename) that container to be able to reuse that name.`, s.ctr, s.ctrID)
	if !hasLine(msg, want) {
		t.Errorf("create of a taken name printed %q\nwant %q", msg, want)
	}
	msg = s.c.fails(t, "create", "--name", "bad name", "base:1")
	if !hasLine(msg, "Error response from daemon: Invalid container name (bad name), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed") {
		t.Errorf("create with an invalid name printed %q", msg)
	}
}

// ps lists the container with its size, as Docker prints it.
func (s *cliSuite) ps(t *testing.T) {
	out := s.c.ok(t, "ps", "-a", "-s")
	if !psHasSize(out, s.ctr) {
		t.Errorf("ps -a -s has no size for %s:\n%s", s.ctr, out)
	}
	out = s.c.ok(t, "ps", "-a", "--no-trunc", "--format", "{{.ID}}|{{.Names}}|{{.Image}}|{{.Status}}")
	if want := s.ctrID + "|" + s.ctr + "|base:1|Created"; !hasLine(out, want) {
		t.Errorf("ps -a:\n%s\nwant the line %s", out, want)
	}
	if out := s.c.ok(t, "ps", "-q"); out != "" {
		t.Errorf("ps without -a lists created containers: %q", out)
	}
	for _, filter := range []string{"name=" + s.ctr, "id=" + s.ctrID[:12], "ancestor=base:1", "status=created"} {
		if out := s.c.ok(t, "ps", "-a", "-q", "--no-trunc", "--filter", filter); !hasLine(out, s.ctrID) {
			t.Errorf("ps -a --filter %s: %q, want %s among them", filter, out, s.ctrID)
		}
	}
	if out := s.c.ok(t, "ps", "-a", "-q", "--filter", "name=nosuch"); out != "" {
		t.Errorf("ps -a --filter name=nosuch: %q", out)
	}
	got := sortedLines(s.c.ok(t, "ps", "-a", "-q", "--no-trunc"))
	want := sortedLines(strata(t, s.root, "ps", "-a", "-q", "--no-trunc"))
	if !slices.Equal(got, want) {
		t.Errorf("docker ps -a -q: %v; strata ps -a -q: %v", got, want)
	}
}

func (s *cliSuite) inspectContainer(t *testing.T) {
	var got []struct {
		ID      string `json:"Id"`
		Name    string
		Image   string
		Created string
		Driver  string
		State   struct{ Status string }
		Config  struct{ Image string }
	}
	must(t, json.Unmarshal([]byte(s.c.ok(t, "container", "inspect", s.ctr)), &got))
	if len(got) != 1 {
		t.Fatalf("container inspect: %d entries", len(got))
	}
	g := got[0]
	if g.ID != s.ctrID || g.Name != "/"+s.ctr || g.Image != s.imageID || g.State.Status != "created" ||
		g.Config.Image != "base:1" || g.Driver == "" || g.Created == "" {
		t.Errorf("container inspect %s: %+v", s.ctr, g)
	}
	sizes := strings.Fields(s.c.ok(t, "container", "inspect", "--size", "--format", "{{.SizeRw}} {{.SizeRootFs}}", s.ctr))
	if len(sizes) != 2 || sizes[0] != "0" || sizes[1] == "0" || sizes[1] == "<nil>" {
		t.Errorf("container inspect --size: SizeRw SizeRootFs = %v, want 0 and the image's size", sizes)
	}
	if id := strings.TrimSpace(s.c.ok(t, "container", "inspect", "--format", "{{.Id}}", s.ctrID[:12])); id != s.ctrID {
		t.Errorf("container inspect by short ID: %q", id)
	}
}

// cpIn copies a file, a directory and a tar on standard input into the
// container, and checks the refusals.
func (s *cliSuite) cpIn(t *testing.T) {
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "file.txt"), []byte("a file\n"), 0o640))
	must(t, os.MkdirAll(filepath.Join(src, "tree/sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "tree/sub/leaf"), []byte("leaf\n"), 0o600))
	must(t, os.Symlink("sub/leaf", filepath.Join(src, "tree/link")))

	s.c.ok(t, "cp", filepath.Join(src, "file.txt"), s.ctr+":/root/")
	s.c.ok(t, "cp", filepath.Join(src, "file.txt"), s.ctr+":/root/renamed.txt")
	s.c.ok(t, "cp", filepath.Join(src, "tree"), s.ctr+":/root/tree")
	stdin := tarOf(t, &tar.Header{Name: "streamed.txt", Mode: 0o644, Size: 4, Typeflag: tar.TypeReg})
	s.c.okIn(t, bytes.NewReader(stdin), "cp", "-", s.ctr+":/tmp")

	if msg := s.c.fails(t, "cp", filepath.Join(src, "file.txt"), s.ctr+":/nodir/x"); !strings.Contains(msg, "/nodir") {
		t.Errorf("cp into a missing directory printed %q", msg)
	}
	if msg := s.c.fails(t, "cp", filepath.Join(src, "file.txt"), s.ctr+":/etc/hostname/x"); !strings.Contains(msg, "not a directory") {
		t.Errorf("cp below a file printed %q, want ... not a directory", msg)
	}
	if msg := s.c.fails(t, "cp", filepath.Join(src, "tree"), s.ctr+":/etc/hostname"); !hasLine(msg, "cannot copy directory") {
		t.Errorf("cp of a directory onto a file printed %q", msg)
	}
	if msg := s.c.fails(t, "cp", filepath.Join(src, "file.txt"), s.ctr+":/etc/hostname/"); !hasLine(msg, "no such directory") {
		t.Errorf("cp onto file/ printed %q", msg)
	}
}

// cpOut copies the same things back out and compares them.
func (s *cliSuite) cpOut(t *testing.T) {
	dst := t.TempDir()
	s.c.ok(t, "cp", s.ctr+":/root/file.txt", filepath.Join(dst, "out.txt"))
	if b, err := os.ReadFile(filepath.Join(dst, "out.txt")); err != nil || string(b) != "a file\n" {
		t.Errorf("cp out of a file: %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "out.txt")); err == nil && fi.Mode().Perm() != 0o640 {
		t.Errorf("cp out of a file: mode %v, want 0640", fi.Mode())
	}
	s.c.ok(t, "cp", s.ctr+":/root/tree", dst)
	if b, err := os.ReadFile(filepath.Join(dst, "tree/sub/leaf")); err != nil || string(b) != "leaf\n" {
		t.Errorf("cp out of a directory: tree/sub/leaf %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "tree/link")); err != nil || l != "sub/leaf" {
		t.Errorf("cp out of a directory: tree/link -> %q, %v", l, err)
	}
	// to standard output: a tar of the one file, named by its base name
	out := s.c.ok(t, "cp", s.ctr+":/root/renamed.txt", "-")
	tr := tar.NewReader(strings.NewReader(out))
	h, err := tr.Next()
	if err != nil || h.Name != "renamed.txt" || h.Size != int64(len("a file\n")) {
		t.Errorf("cp to stdout: first entry %+v, %v", h, err)
	}
	s.c.ok(t, "cp", s.ctr+":/tmp/streamed.txt", filepath.Join(dst, "streamed.txt"))

	msg := s.c.fails(t, "cp", s.ctr+":/nonexistent", filepath.Join(dst, "x"))
	want := "Error response from daemon: Could not find the file /nonexistent in container " + s.ctr
	if s.c.old() {
		want = "Error: No such container:path: " + s.ctr + ":/nonexistent"
	}
	if !hasLine(msg, want) {
		t.Errorf("cp of a missing path printed %q\nwant %q", msg, want)
	}
	if msg := s.c.fails(t, "cp", s.ctr+":/etc/hostname/", filepath.Join(dst, "y")); !strings.Contains(msg, "not a directory") && !strings.Contains(msg, "No such container:path") {
		t.Errorf("cp of file/ printed %q", msg)
	}
	if msg := s.c.fails(t, "cp", s.ctr+":/etc", filepath.Join(dst, "out.txt")+"/"); !strings.Contains(msg, "not a directory") {
		t.Errorf("cp of a directory onto a local file printed %q", msg)
	}
}

// diffAfterCp is what docker diff prints after cpIn's copies and diff's
// removal.
var diffAfterCp = []string{
	"A /root/file.txt", "A /root/renamed.txt", "A /root/tree", "A /root/tree/link", "A /root/tree/sub",
	"A /root/tree/sub/leaf", "A /tmp/streamed.txt", "C /etc", "C /root", "C /tmp", "D /etc/motd",
}

// diff also deletes a file through `strata mount` on the daemon's root, so
// that all three kinds of change show.
func (s *cliSuite) diff(t *testing.T) {
	mnt := strings.TrimSpace(strata(t, s.root, "mount", s.ctr))
	must(t, os.Remove(filepath.Join(mnt, "etc/motd")))
	strata(t, s.root, "umount", s.ctr)
	got := sortedLines(s.c.ok(t, "diff", s.ctr))
	if !slices.Equal(got, diffAfterCp) {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(diffAfterCp, "\n"))
	}
	if want := sortedLines(strata(t, s.root, "diff", s.ctr)); !slices.Equal(got, want) {
		t.Errorf("docker diff %v, strata diff %v", got, want)
	}
}

// export compares docker export with strata export of the same container.
func (s *cliSuite) export(t *testing.T) {
	dir := t.TempDir()
	viaDaemon, viaCLI := filepath.Join(dir, "daemon.tar"), filepath.Join(dir, "cli.tar")
	s.c.ok(t, "export", "-o", viaDaemon, s.ctr)
	strata(t, s.root, "export", "-o", viaCLI, s.ctr)
	read := func(p string) (map[string]entry, [][2]string) {
		f, err := os.Open(p)
		must(t, err)
		defer f.Close()
		return readExport(t, f)
	}
	want, wantLinks := read(viaCLI)
	got, gotLinks := read(viaDaemon)
	if diffs := compareEntries("strata export", "docker export", want, got, wantLinks, gotLinks); len(diffs) > 0 {
		t.Errorf("docker export differs from strata export in %d entries, e.g.:\n%s", len(diffs), strings.Join(diffs[:min(len(diffs), 20)], "\n"))
	}
	if _, ok := got["/root/tree/sub/leaf"]; !ok || len(got) < 1000 {
		t.Errorf("docker export: %d entries, /root/tree/sub/leaf present %v", len(got), ok)
	}
}

func (s *cliSuite) commit(t *testing.T) {
	ref := s.p + "-committed:1"
	out := strings.TrimSpace(s.c.ok(t, "commit", "-c", "ENV FOO=bar", "-c", `CMD ["/bin/true"]`,
		"-m", "cp edits", "-a", "e2e <e2e@example.com>", s.ctr, ref))
	if !imageIDPattern.MatchString(out) {
		t.Fatalf("commit printed %q", out)
	}
	s.committed = out
	var got []imageInspect
	must(t, json.Unmarshal([]byte(s.c.ok(t, "image", "inspect", ref)), &got))
	g := got[0]
	if g.ID != out || g.Comment != "cp edits" || g.Author != "e2e <e2e@example.com>" || len(g.RootFS.Layers) != 2 ||
		!slices.Contains(g.Config.Env, "FOO=bar") || !slices.Equal(g.Config.Cmd, []string{"/bin/true"}) {
		t.Errorf("image inspect %s: %+v", ref, g)
	}
	hist := strings.Split(strings.TrimSpace(s.c.ok(t, "history", "--no-trunc", "--format", "{{.ID}}|{{.Comment}}", ref)), "\n")
	if len(hist) != 2 || hist[0] != out+"|cp edits" || !strings.HasPrefix(hist[1], s.imageID+"|") {
		t.Errorf("history %s: %q", ref, hist)
	}
	// a container of the commit sees the edits and has no changes of its own
	child := s.p + "-child"
	s.c.ok(t, "create", "--name", child, ref)
	if out := s.c.ok(t, "diff", child); out != "" {
		t.Errorf("diff of a container of the commit: %q", out)
	}
	tr := tar.NewReader(strings.NewReader(s.c.ok(t, "cp", child+":/root/tree/sub/leaf", "-")))
	if h, err := tr.Next(); err != nil || h.Name != "leaf" {
		t.Errorf("cp out of the committed file: %+v, %v", h, err)
	} else if b, _ := io.ReadAll(tr); string(b) != "leaf\n" {
		t.Errorf("committed file holds %q", b)
	}
	// without a reference: a dangling image
	bare := strings.TrimSpace(s.c.ok(t, "commit", child))
	if tags := strings.TrimSpace(s.c.ok(t, "image", "inspect", "--format", "{{json .RepoTags}}", bare)); tags != "[]" {
		t.Errorf("commit without a reference: RepoTags %s, want []", tags)
	}
	if out := s.c.ok(t, "images", "-q", "--no-trunc", "--filter", "dangling=true"); strings.TrimSpace(out) != bare {
		t.Errorf("images --filter dangling=true: %q, want %s", out, bare)
	}
	if out := s.c.ok(t, "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "dangling=true"); strings.TrimSpace(out) != "<none>:<none>" {
		t.Errorf("a dangling image lists as %q, want <none>:<none>", out)
	}
	s.c.ok(t, "rmi", bare)
}

// genericInspect is `docker inspect` without --type: the CLI tries
// containers then images, and needs clean 404s in between.
func (s *cliSuite) genericInspect(t *testing.T) {
	for name, want := range map[string]string{
		s.ctr: s.ctrID, s.ctrID[:12]: s.ctrID, "base:1": s.imageID, s.p + "-committed:1": s.committed,
	} {
		if got := strings.TrimSpace(s.c.ok(t, "inspect", "--format", "{{.Id}}", name)); got != want {
			t.Errorf("inspect %s: %q, want %s", name, got, want)
		}
	}
	out := s.c.ok(t, "inspect", "--format", "{{.Id}}", s.ctr, "base:1")
	if got := strings.Fields(out); !slices.Equal(got, []string{s.ctrID, s.imageID}) {
		t.Errorf("inspect of a container and an image: %q", out)
	}
	if msg := s.c.fails(t, "inspect", "--type", "image", s.ctr); !strings.Contains(msg, "No such image") {
		t.Errorf("inspect --type image of a container printed %q", msg)
	}
}

func (s *cliSuite) systemDF(t *testing.T) {
	out := s.c.ok(t, "system", "df", "--format", "{{.Type}}|{{.TotalCount}}|{{.Active}}")
	ctrs := len(strings.Fields(strata(t, s.root, "ps", "-a", "-q")))
	imgs := len(strings.Fields(strata(t, s.root, "images", "-q")))
	for _, want := range []string{fmt.Sprintf("Images|%d|", imgs), fmt.Sprintf("Containers|%d|0", ctrs)} {
		if !strings.Contains(out, want) {
			t.Errorf("system df:\n%s\nwant a line starting %s", out, want)
		}
	}
	verbose := s.c.ok(t, "system", "df", "-v")
	for _, want := range []string{"base", s.ctr, s.p + "-committed"} {
		if !strings.Contains(verbose, want) {
			t.Errorf("system df -v lacks %s:\n%s", want, verbose)
		}
	}
}

func (s *cliSuite) info(t *testing.T) {
	var got struct {
		Containers, ContainersRunning, ContainersPaused, ContainersStopped, Images int
		Driver, DockerRootDir, OSType, ServerVersion, KernelVersion                string
		ServerErrors                                                               []string
	}
	must(t, json.Unmarshal([]byte(s.c.ok(t, "info", "--format", "{{json .}}")), &got))
	if got.Containers != got.ContainersRunning+got.ContainersPaused+got.ContainersStopped || got.Containers == 0 ||
		got.Images == 0 || got.Driver == "" || got.DockerRootDir != s.root || got.OSType != "linux" ||
		got.ServerVersion == "" || len(got.ServerErrors) > 0 {
		t.Errorf("info: %+v", got)
	}
	if out := s.c.ok(t, "info"); !strings.Contains(out, "Storage Driver: "+got.Driver) {
		t.Errorf("info lacks the storage driver:\n%s", out)
	}
}

func (s *cliSuite) version(t *testing.T) {
	var got struct {
		Client struct{ APIVersion string }
		Server *struct {
			APIVersion, MinAPIVersion, Os, Arch, Version string
		}
	}
	must(t, json.Unmarshal([]byte(s.c.ok(t, "version", "--format", "{{json .}}")), &got))
	want := "1.50"
	if s.c.old() {
		want = "1.41"
	}
	if got.Server == nil || got.Client.APIVersion != want || got.Server.APIVersion != "1.50" ||
		got.Server.MinAPIVersion != "1.24" || got.Server.Os != "linux" || got.Server.Version == "" {
		t.Errorf("version: client API %s (want %s), server %+v", got.Client.APIVersion, want, got.Server)
	}
}

// save saves two names of base:1 and the commit, checks the archive, and
// (first suite) loads it into a real dockerd.
func (s *cliSuite) save(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "saved.tar")
	names := []string{"base:1", s.p + "-tagged:v1", s.p + "-committed:1"}
	s.c.ok(t, append([]string{"save", "-o", archive}, names...)...)
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	files := map[string]bool{}
	eachTarFile(t, archive, func(name string, r io.Reader) bool {
		files[name] = true
		if name == "manifest.json" {
			must(t, json.NewDecoder(r).Decode(&manifest))
		}
		return false
	})
	for _, f := range []string{"manifest.json", "index.json", "oci-layout", "repositories"} {
		if !files[f] {
			t.Errorf("saved archive lacks %s", f)
		}
	}
	var tags []string
	for _, m := range manifest {
		tags = append(tags, m.RepoTags...)
	}
	slices.Sort(tags)
	if want := slices.Sorted(slices.Values(names)); !slices.Equal(tags, want) {
		t.Errorf("saved RepoTags %v, want %v", tags, want)
	}
	if !s.first {
		return
	}
	d := startDockerd(t)
	if _, err := d.run("load", "-i", archive); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"base:1": s.imageID, s.p + "-tagged:v1": s.imageID, s.p + "-committed:1": s.committed} {
		got, err := d.run("image", "inspect", "--format", "{{.Id}}", name)
		if err != nil || strings.TrimSpace(got) != want {
			t.Errorf("dockerd loaded %s as %q (%v), want %s", name, got, err, want)
		}
	}
	// dockerd sees the committed files
	id, err := d.run("create", s.p+"-committed:1")
	if err != nil {
		t.Fatal(err)
	}
	out, err := d.run("cp", strings.TrimSpace(id)+":/root/tree/sub/leaf", "-")
	if err != nil || !strings.Contains(out, "leaf\n") {
		t.Errorf("dockerd container of the saved commit: %v %q", err, tail(out, 200))
	}
	if out, err := d.run("cp", strings.TrimSpace(id)+":/etc/motd", "-"); err == nil {
		t.Errorf("dockerd container of the saved commit has /etc/motd, which the commit deleted: %q", tail(out, 200))
	}
}

func (s *cliSuite) pull(t *testing.T) {
	const notSupported = "Error response from daemon: pulling images is not supported by strata yet"
	if msg := s.c.fails(t, "pull", "busybox:latest"); !hasLine(msg, notSupported) {
		t.Errorf("pull printed %q, want %q", msg, notSupported)
	}
	// create of a missing image tries a pull: the same message, after the CLI's own line
	msg := s.c.fails(t, "create", "nosuch:latest")
	if !hasLine(msg, "Unable to find image 'nosuch:latest' locally") || !hasLine(msg, notSupported) {
		t.Errorf("create of a missing image printed %q", msg)
	}
}

// errors checks the messages the CLI prints for missing objects, as it
// prints them for a real dockerd (20.10 formats some of them itself).
func (s *cliSuite) errors(t *testing.T) {
	const noImage = "Error response from daemon: No such image: nosuch:latest"
	const noCtr = "Error response from daemon: No such container: nosuch"
	cases := []struct {
		args     []string
		new, old string
	}{
		{[]string{"image", "inspect", "nosuch"}, noImage, "Error: No such image: nosuch"},
		{[]string{"inspect", "nosuch"}, "Error: No such object: nosuch", "Error: No such object: nosuch"},
		{[]string{"history", "nosuch"}, noImage, noImage},
		{[]string{"rmi", "nosuch"}, noImage, "Error: No such image: nosuch"},
		{[]string{"save", "-o", filepath.Join(t.TempDir(), "x.tar"), "nosuch"}, noImage, noImage},
		{[]string{"diff", "nosuch"}, noCtr, noCtr},
		{[]string{"export", "-o", filepath.Join(t.TempDir(), "x.tar"), "nosuch"}, noCtr, noCtr},
		{[]string{"commit", "nosuch"}, noCtr, noCtr},
		{[]string{"container", "inspect", "nosuch"}, noCtr, "Error: No such container: nosuch"},
		{[]string{"rm", "nosuch"}, noCtr, "Error: No such container: nosuch"},
		{[]string{"cp", "nosuch:/etc", t.TempDir()}, noCtr, "Error: No such container:path: nosuch:/etc"},
	}
	for _, c := range cases {
		want := c.new
		if s.c.old() {
			want = c.old
		}
		if msg := s.c.fails(t, c.args...); !hasLine(msg, want) {
			t.Errorf("docker %s printed %q\nwant %q", strings.Join(c.args, " "), msg, want)
		}
	}
}

// rmiConflict removes images that containers use: refused with Docker's
// conflict messages, and nothing removed.
func (s *cliSuite) rmiConflict(t *testing.T) {
	msg := s.c.fails(t, "rmi", s.imageID[7:19])
	want := fmt.Sprintf("Error response from daemon: conflict: unable to delete %s (must be forced) - image is being used by stopped container %s", s.imageID[7:19], s.ctrID[:12])
	if !hasLine(msg, want) && !strings.Contains(msg, "image is referenced in multiple repositories") {
		t.Errorf("rmi of an image in use printed %q\nwant %q", msg, want)
	}
	msg = s.c.fails(t, "rmi", s.p+"-committed:1")
	if !strings.Contains(msg, "Error response from daemon: conflict: unable to ") || !strings.Contains(msg, "(must") {
		t.Errorf("rmi of the only tag of an image in use printed %q", msg)
	}
	if id := strings.TrimSpace(s.c.ok(t, "image", "inspect", "--format", "{{.Id}}", s.p+"-committed:1")); id != s.committed {
		t.Errorf("after the refused rmi: %q", id)
	}
}

// rm removes several containers at once (the CLI sends the requests in
// parallel), and reports the missing one among them.
func (s *cliSuite) rm(t *testing.T) {
	names := []string{s.ctr, s.p + "-child"}
	for i := range 6 {
		name := fmt.Sprintf("%s-rm%d", s.p, i)
		s.c.ok(t, "create", "--name", name, "base:1")
		names = append(names, name)
	}
	out, errOut, code := runDocker(t, s.c.bin, s.c.sock, nil, append([]string{"rm"}, append(names, "nosuch")...)...)
	want := "Error response from daemon: No such container: nosuch"
	if s.c.old() {
		want = "Error: No such container: nosuch"
	}
	if code != 1 || !hasLine(errOut, want) || strings.Count(errOut, "\n") != 1 {
		t.Errorf("rm of %d containers and a missing one: exit %d, stderr %q", len(names), code, errOut)
	}
	if got := sortedLines(out); !slices.Equal(got, slices.Sorted(slices.Values(names))) {
		t.Errorf("rm printed %v, want %v", got, names)
	}
	if out := s.c.ok(t, "ps", "-a", "-q"); out != "" {
		t.Errorf("containers left: %s", out)
	}
	if out := strata(t, s.root, "ps", "-a", "-q"); out != "" {
		t.Errorf("strata ps -a -q after docker rm: %s", out)
	}
	if m := mountsUnder(s.root); len(m) > 0 {
		t.Errorf("mounts left after rm: %v", m)
	}
}

// rmi removes by tag, by the ID's digest form and by short ID, and leaves
// an empty store.
func (s *cliSuite) rmi(t *testing.T) {
	if out := s.c.ok(t, "rmi", s.p+"-tagged:v1"); strings.TrimSpace(out) != "Untagged: "+s.p+"-tagged:v1" {
		t.Errorf("rmi of one of several tags printed %q", out)
	}
	out := s.c.ok(t, "rmi", s.committed)
	if !hasLine(out, "Untagged: "+s.p+"-committed:1") || !hasLine(out, "Deleted: "+s.committed) {
		t.Errorf("rmi by digest printed %q", out)
	}
	// base:1 has two tags: by ID it needs -f
	msg := s.c.fails(t, "rmi", s.imageID[7:19])
	if !strings.Contains(msg, "conflict: unable to delete "+s.imageID[7:19]+" (must be forced) - image is referenced in multiple repositories") {
		t.Errorf("rmi by ID of an image with two names printed %q", msg)
	}
	s.c.ok(t, "rmi", "localhost:5000/"+s.p+"/deep/name:v2")
	out = s.c.ok(t, "rmi", s.imageID[7:19])
	if !hasLine(out, "Untagged: base:1") || !hasLine(out, "Deleted: "+s.imageID) {
		t.Errorf("rmi by short ID printed %q", out)
	}
	if out := s.c.ok(t, "images", "-a", "-q"); out != "" {
		t.Errorf("images left: %s", out)
	}
	if out := strata(t, s.root, "images", "--tree"); out != "" {
		t.Errorf("layers left:\n%s", out)
	}
}

// testSigtermReleasesMounts stops the daemon while an export holds its
// container mounted: it exits, and nothing stays mounted under the root.
func testSigtermReleasesMounts(t *testing.T, d *strataDaemon, dir string) {
	strata(t, d.root, "load", "-q", "-i", filepath.Join(dir, "base.tar"))
	c := dockerClient{bin: newestDocker(t), sock: d.sock}
	c.ok(t, "create", "--name", "held", "base:1")
	resp, err := unixHTTP(d.sock).Get("http://strata/containers/held/export")
	must(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("export: %s", resp.Status)
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	if len(mountsUnder(d.root)) == 0 {
		t.Log("nothing mounted during the export (driver without mounts)")
	}
	var wg sync.WaitGroup
	wg.Go(func() { io.Copy(io.Discard, resp.Body) }) // a client that keeps reading
	if err := d.stop(60 * time.Second); err != nil {
		t.Errorf("daemon after SIGTERM: %v\n%s", err, d.logTail())
	}
	wg.Wait()
	if m := mountsUnder(d.root); len(m) > 0 {
		t.Errorf("mounts left after SIGTERM: %v", m)
	}
	if _, err := os.Stat(d.sock); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}
	// the store is whole: the CLI removes what the daemon made
	strata(t, d.root, "rm", "held")
	strata(t, d.root, "rmi", "base:1")
}
