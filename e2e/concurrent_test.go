package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// layerTar returns a layer tar of files name -> content.
func layerTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeArchive writes a docker save archive (manifest.json, blobs/) of
// images tag -> layers, base first.
func writeArchive(t *testing.T, path string, images map[string][][]byte) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	written := map[string]bool{}
	blob := func(b []byte) string {
		name := "blobs/sha256/" + sha(b)
		if !written[name] {
			written[name] = true
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg})
			tw.Write(b)
		}
		return name
	}
	type entry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	var manifest []entry
	for tag, layers := range images {
		var diffIDs, paths []string
		for _, l := range layers {
			diffIDs = append(diffIDs, "sha256:"+sha(l))
			paths = append(paths, blob(l))
		}
		config, _ := json.Marshal(map[string]any{
			"architecture": "amd64", "os": "linux", "config": map[string]any{"Cmd": []string{"/bin/sh"}, "Labels": map[string]string{"tag": tag}},
			"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
		})
		manifest = append(manifest, entry{Config: blob(config), RepoTags: []string{tag}, Layers: paths})
	}
	m, _ := json.Marshal(manifest)
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(m)), Typeflag: tar.TypeReg})
	tw.Write(m)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentProcesses runs several strata processes on one store at
// once: loads of overlapping archives, listings, tags and removals. The store
// must end consistent: every image whole, shared layers stored once, no
// lease or layer left behind, and a save that loads again.
func TestConcurrentProcesses(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: the store uses the overlay driver")
	}
	root := newRoot(t)
	dir := t.TempDir()
	base := layerTar(t, map[string]string{"etc/os-release": "strata test\n", "bin/sh": "#!fake\n"})
	archives := make([]string, 4)
	for i := range archives {
		archives[i] = filepath.Join(dir, fmt.Sprintf("a%d.tar", i))
		mid := layerTar(t, map[string]string{"shared/mid": "mid"})
		writeArchive(t, archives[i], map[string][][]byte{
			fmt.Sprintf("app%d:1", i): {base, mid, layerTar(t, map[string]string{fmt.Sprintf("app/%d", i): strings.Repeat("x", 100000*i)})},
			"common:1":                {base, mid},
		})
	}

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	run := func(args ...string) {
		defer wg.Done()
		out, err := exec.Command(strataBin, append([]string{"--root", root, "--storage-driver", "overlay"}, args...)...).CombinedOutput()
		if err != nil {
			errs <- fmt.Errorf("strata %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for round := 0; round < 3; round++ {
		for _, a := range archives {
			wg.Add(1)
			go run("load", "-q", "-i", a)
		}
		wg.Add(3)
		go run("images")
		go run("images", "--tree")
		go run("info")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// common:1 is in every archive: loaded by all, stored once.
	ids := strings.Fields(strata(t, root, "images", "-q"))
	if len(ids) != 5 {
		t.Fatalf("images -q = %v, want 5 images", ids)
	}
	tree := strata(t, root, "images", "--tree")
	if n := strings.Count(tree, "Virtual Size"); n != 6 {
		t.Fatalf("want 6 layers (base, mid, 4 tops), tree:\n%s", tree)
	}
	if leases, _ := os.ReadDir(filepath.Join(root, "leases")); len(leases) != 0 {
		t.Errorf("leases left behind: %d", len(leases))
	}

	// Remove in parallel; the shared layers go with the last image.
	wg.Add(5)
	errs = make(chan error, 8)
	for i := range archives {
		go run("rmi", fmt.Sprintf("app%d:1", i))
	}
	go run("rmi", "common:1")
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if out := strata(t, root, "images", "-q", "-a"); strings.TrimSpace(out) != "" {
		t.Errorf("images left: %s", out)
	}
	if tree := strata(t, root, "images", "--tree"); strings.TrimSpace(tree) != "" {
		t.Errorf("layers left:\n%s", tree)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "overlay"))
	for _, e := range entries {
		if e.Name() != "l" && !strings.HasPrefix(e.Name(), ".") {
			t.Errorf("driver layer left behind: %s", e.Name())
		}
	}
}
