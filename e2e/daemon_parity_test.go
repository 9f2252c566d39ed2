package e2e

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestDaemonDockerParity runs one script of docker commands against strata's
// daemon and against a real dockerd, with each CLI, and compares what the
// CLI prints (standard output, standard error, exit code) once IDs, times,
// temporary paths and the driver's name are normalised. Steps named "#tar"
// and "#export" compare the tars of `docker cp c:path -` and `docker export`
// entry by entry; steps marked "+" move whole images and run with the newest
// CLI only.
func TestDaemonDockerParity(t *testing.T) {
	dir := images(t)
	sock, _ := startDaemon(t)
	d := startDockerd(t)
	dockerSock := strings.TrimPrefix(d.host, "unix://")

	file := filepath.Join(t.TempDir(), "note.txt")
	must(t, os.WriteFile(file, []byte("parity\n"), 0o644))
	must(t, os.Chown(file, 1234, 5678)) // cp keeps it only with -a
	tree := filepath.Join(t.TempDir(), "tree")
	must(t, os.MkdirAll(filepath.Join(tree, "sub"), 0o750))
	must(t, os.WriteFile(filepath.Join(tree, "sub/leaf"), []byte("leaf\n"), 0o600))
	must(t, os.Symlink("sub/leaf", filepath.Join(tree, "link")))
	base := filepath.Join(dir, "base.tar")
	saves := t.TempDir()
	var baseID string // the config's digest, the same on both sides
	eachTarFile(t, base, func(name string, r io.Reader) bool {
		var m []struct{ Config string }
		if name == "manifest.json" {
			must(t, json.NewDecoder(r).Decode(&m))
			baseID = strings.TrimSuffix(filepath.Base(m[0].Config), ".json")
		}
		return name == "manifest.json"
	})

	for i, bin := range []string{dockerOld, dockerNew} {
		if _, err := os.Stat(bin); err != nil {
			continue
		}
		p := fmt.Sprintf("par%d", i)
		script := [][]string{
			{"load", "-i", base},
			{"images"},
			{"images", "-a", "--digests"},
			{"images", "--filter", "reference=base"},
			{"images", "--format", "{{.Repository}}|{{.Tag}}|{{.ID}}|{{.Size}}", "base:1"},
			{"image", "inspect", "--format", "{{json .RepoTags}}|{{json .RepoDigests}}|{{.Parent}}|{{.Comment}}|{{.Created}}|{{.DockerVersion}}|{{.Author}}|{{.Architecture}}|{{.Os}}|{{.Size}}|{{json .RootFS}}|{{json .Config}}", "base:1"},
			{"history", "base:1"},
			{"history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Size}}|{{.Comment}}", "base:1"},
			{"tag", "base:1", p + "-tag:1"},
			{"create", "--name", p + "-c", "base:1"},
			{"create", "--name", p + "-c", "base:1"},
			{"ps", "-a"},
			{"ps", "-a", "-s"},
			{"container", "inspect", "--format", "{{.Name}}|{{.Path}}|{{json .Args}}|{{.State.Status}}|{{.State.Running}}|{{json .Config.Cmd}}|{{json .Config.Env}}|{{.Config.Image}}|{{.Platform}}|{{.RestartCount}}|{{.HostConfig.NetworkMode}}", p + "-c"},
			{"cp", file, p + "-c:/root/"},
			{"cp", "-a", file, p + "-c:/tmp/"},
			{"cp", tree, p + "-c:/srv/"},
			{"cp", tree, p + "-c:/srv/tree"},
			{"cp", file, p + "-c:/srv/tree/."},
			{"#tar", p + "-c:/root/note.txt"},
			{"#tar", p + "-c:/tmp/note.txt"},
			{"#tar", p + "-c:/srv"},
			{"#tar", p + "-c:/srv/tree/."},
			{"#tar", p + "-c:/etc/mtab"},
			{"cp", file, p + "-c:/nodir/"},
			{"cp", p + "-c:/nonexistent", "-"},
			{"cp", file, p + "-c:/etc/hostname/x"},
			{"cp", file, p + "-c:/etc/motd"},
			{"diff", p + "-c"},
			{"+#export", p + "-c"},
			{"inspect", "--format", "{{.Name}}", p + "-c"},
			{"create", "--name", p + "-opts", "--label", "a=b", "-e", "X=1", "-w", "/srv", "--entrypoint", "/bin/sh",
				"-u", "1000:1000", "--hostname", "h", "--stop-signal", "SIGINT", "base:1", "-c", "true"},
			{"container", "inspect", "--format", "{{json .Config}}|{{.Path}}|{{json .Args}}", p + "-opts"},
			{"ps", "-a", "--no-trunc", "--format", "{{.Names}}|{{.Command}}|{{.Labels}}|{{.Image}}|{{.Status}}"},
			{"ps", "-a", "--format", "{{.Names}}", "--filter", "label=a=b"},
			{"ps", "-a", "--format", "{{.Names}}", "--filter", "ancestor=base"},
			{"commit", "-c", "CMD [\"/bin/true\"]", "-c", "ENTRYPOINT [\"/bin/sh\", \"-c\"]", "-c", "WORKDIR /data",
				"-c", "USER nobody", "-c", "EXPOSE 8080", "-c", "LABEL k=v", "-c", "VOLUME /data", p + "-opts", p + "-opts:1"},
			{"image", "inspect", "--format", "{{json .Config}}|{{.Comment}}|{{.Author}}", p + "-opts:1"},
			{"history", "--format", "{{.CreatedBy}}|{{.Size}}|{{.Comment}}", p + "-opts:1"},
			{"images", "--filter", "label=k=v", "--format", "{{.Repository}}:{{.Tag}}"},
			{"images", "--filter", "since=base:1", "--format", "{{.Repository}}:{{.Tag}}"},
			{"images", "--filter", "before=" + p + "-opts:1", "--format", "{{.Repository}}:{{.Tag}}"},
			{"rmi", "-f", p + "-opts:1"},
			{"images", "-a"},
			{"rm", p + "-opts"},
			{"images", "-a"},
			{"rmi", "54b05d4eced7"},
			{"tag", "base:1", "localhost:5000/" + p + "/deep:2"},
			{"images", "localhost:5000/" + p + "/deep"},
			// strata's save is written last, so both daemons load strata's archive
			{"+save", "-o", filepath.Join(saves, p+"-byid.tar"), "54b05d4eced7"},
			{"+load", "-i", filepath.Join(saves, p+"-byid.tar")},
			{"+save", "-o", filepath.Join(saves, p+"-names.tar"), "base:1", p + "-tag:1", "localhost:5000/" + p + "/deep:2"},
			{"+load", "-i", filepath.Join(saves, p+"-names.tar")},
			{"export", "-o", filepath.Join(t.TempDir(), "x.tar"), "nosuch"},
			{"commit", "-m", "parity", "-a", "e2e", "-c", "ENV X=1", p + "-c", p + "-commit:1"},
			{"image", "inspect", "--format", "{{json .RepoTags}}|{{.Comment}}|{{.Author}}|{{json .Config.Env}}|{{len .RootFS.Layers}}", p + "-commit:1"},
			{"history", p + "-commit:1"},
			{"image", "inspect", "--format", "{{.Parent}}|{{.Config.Image}}", p + "-commit:1"},
			// rmi prunes parents left without tags, children or containers
			{"create", "--name", p + "-pr1", "base:1"},
			{"cp", file, p + "-pr1:/root/"},
			{"commit", p + "-pr1", p + "-pr1:1"},
			{"rm", p + "-pr1"},
			{"create", "--name", p + "-pr2", p + "-pr1:1"},
			{"cp", file, p + "-pr2:/tmp/"},
			{"commit", p + "-pr2", p + "-pr2:1"},
			{"rm", p + "-pr2"},
			{"rmi", p + "-pr1:1"},
			{"images", "-a", "--format", "{{.Repository}}:{{.Tag}}"},
			{"rmi", p + "-pr2:1"},
			{"images", "-a", "--format", "{{.Repository}}:{{.Tag}}"},
			{"system", "df"},
			{"rmi", "base:1"},
			{"rmi", p + "-commit:1"},
			{"inspect", "nosuch"},
			{"history", "nosuch:2"},
			{"tag", "nosuch", "x"},
			{"diff", "nosuch"},
			{"container", "inspect", "nosuch"},
			{"commit", "nosuch"},
			{"rm", "nosuch", p + "-c"},
			{"rmi", p + "-commit:1"},
			{"images"},
			{"rmi", p + "-tag:1", "localhost:5000/" + p + "/deep:2"},
			{"images", "-a"},
			{"system", "df"},
		}
		t.Run(map[string]string{dockerNew: "docker28", dockerOld: "docker20"}[bin], func(t *testing.T) {
			want, got := newNormalizer(baseID), newNormalizer(baseID)
			for _, args := range script {
				if heavy, ok := strings.CutPrefix(args[0], "+"); ok {
					if bin != newestDocker(t) {
						continue // steps that move whole images run with one CLI
					}
					args = append([]string{heavy}, args[1:]...)
				}
				if args[0] == "#export" { // the container's whole file system
					w, wLinks := exportEntries(t, bin, dockerSock, args[1])
					g, gLinks := exportEntries(t, bin, sock, args[1])
					if diffs := compareEntries("dockerd", "strata", w, g, wLinks, gLinks); len(diffs) > 0 {
						t.Errorf("docker export %s differs in %d entries, e.g.:\n%s", args[1], len(diffs), strings.Join(diffs[:min(len(diffs), 20)], "\n"))
					}
					continue
				}
				if args[0] == "#tar" { // what `docker cp c:path -` streams, header by header
					w, g := cpHeaders(t, bin, dockerSock, args[1]), cpHeaders(t, bin, sock, args[1])
					if w != g {
						t.Errorf("docker cp %s -\n--- dockerd:\n%s\n--- strata:\n%s", args[1], w, g)
					}
					continue
				}
				wOut, wErr, wCode := runDocker(t, bin, dockerSock, nil, args...)
				gOut, gErr, gCode := runDocker(t, bin, sock, nil, args...)
				// dockerd lists the tags of one image, and changes, in no fixed order
				order := map[string]lineOrder{"images": sortBelowHeader, "ps": sortBelowHeader, "diff": sortAll, "load": sortAll}[args[0]]
				if order == sortBelowHeader && slices.Contains(args, "--format") {
					order = sortAll // no header
				}
				w := fmt.Sprintf("exit %d\n%s\n%s", wCode, want.apply(wOut, order), want.apply(wErr, keepOrder))
				g := fmt.Sprintf("exit %d\n%s\n%s", gCode, got.apply(gOut, order), got.apply(gErr, keepOrder))
				if w != g {
					t.Errorf("docker %s\n--- dockerd:\n%s\n--- strata:\n%s", strings.Join(args, " "), w, g)
				}
			}
		})
	}
}

// exportEntries reads what `docker export` writes for container c.
func exportEntries(t *testing.T, bin, sock, c string) (map[string]entry, [][2]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "export.tar")
	if _, errOut, code := runDocker(t, bin, sock, nil, "export", "-o", path, c); code != 0 {
		t.Fatalf("docker export %s: exit %d: %s", c, code, errOut)
	}
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	return readExport(t, f)
}

// cpHeaders lists the tar that `docker cp src -` writes: each entry's name,
// type, permissions, owner, size and link target.
func cpHeaders(t *testing.T, bin, sock, src string) string {
	t.Helper()
	out, errOut, code := runDocker(t, bin, sock, nil, "cp", src, "-")
	if code != 0 {
		return fmt.Sprintf("exit %d: %s", code, errOut)
	}
	var lines []string
	tr := tar.NewReader(strings.NewReader(out))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return strings.Join(append(lines, err.Error()), "\n")
		}
		lines = append(lines, fmt.Sprintf("%s %c %o %d:%d %d %q", h.Name, h.Typeflag, h.Mode&0o7777, h.Uid, h.Gid, h.Size, h.Linkname))
	}
	return strings.Join(lines, "\n")
}

// normalizer rewrites what one daemon's CLI printed so that it can be
// compared with the other's: IDs become tokens numbered by first appearance
// (a short ID gets its long ID's token), clock-dependent text goes.
type normalizer struct {
	ids map[string]string // full hex ID -> token
}

// newNormalizer starts with the IDs both sides share, so that a difference
// in what one side prints first does not renumber the rest.
func newNormalizer(shared ...string) *normalizer {
	n := &normalizer{ids: map[string]string{}}
	for _, id := range shared {
		n.token(id)
	}
	return n
}

var (
	longHex   = regexp.MustCompile(`[0-9a-f]{64}`)
	shortHex  = regexp.MustCompile(`\b[0-9a-f]{12}\b`)
	agoText   = regexp.MustCompile(`(Less than a second|About a minute|About an hour|\d+ (seconds?|minutes?|hours?|days?|weeks?|months?|years?)) ago`)
	timestamp = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
	space     = regexp.MustCompile(`[ \t]+`)
	tempPath  = regexp.MustCompile(`/var/tmp/strata-e2e-[^ "]*`)
)

func (n *normalizer) token(id string) string {
	tok, ok := n.ids[id]
	if !ok {
		tok = fmt.Sprintf("<id%d>", len(n.ids)+1)
		n.ids[id] = tok
	}
	return tok
}

// lineOrder says which lines of an output may come in any order.
type lineOrder int

const (
	keepOrder lineOrder = iota
	sortBelowHeader
	sortAll
)

func (n *normalizer) apply(s string, order lineOrder) string {
	s = longHex.ReplaceAllStringFunc(s, n.token)
	s = shortHex.ReplaceAllStringFunc(s, func(short string) string {
		for id, tok := range n.ids {
			if strings.HasPrefix(id, short) {
				return tok
			}
		}
		return n.token(short)
	})
	s = agoText.ReplaceAllString(s, "<ago>")
	s = timestamp.ReplaceAllString(s, "<time>")
	s = tempPath.ReplaceAllString(s, "<path>")
	s = strings.ReplaceAll(s, "overlay2", "overlay")
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, `time="`) {
			continue // the CLI's own logging, e.g. of a tar it stopped sending
		}
		lines = append(lines, strings.TrimSpace(space.ReplaceAllString(l, " ")))
	}
	switch {
	case order == sortBelowHeader && len(lines) > 1:
		slices.Sort(lines[1:])
	case order == sortAll:
		slices.Sort(lines)
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}
