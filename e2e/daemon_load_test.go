package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-storage/strata/store"
)

// TestDaemonLoad has 16 clients loop create / cp in / diff / rm against one
// daemon for 60 s (10 s with -short), then checks that nothing failed and
// nothing is left: no container, no layer beyond the image's, no driver
// layer, no mount under the root. It logs latency percentiles per
// operation; it asserts none (performance is bench/daemon.sh's).
func TestDaemonLoad(t *testing.T) {
	dir := images(t)
	sock, root := startDaemon(t)
	strata(t, root, "load", "-q", "-i", filepath.Join(dir, "base.tar"))
	layersBefore, driverBefore := storeLayers(t, root)

	const clients = 16
	duration := 60 * time.Second
	if testing.Short() {
		duration = 10 * time.Second
	}
	client := unixHTTP(sock)
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = clients
	var (
		mu        sync.Mutex
		latencies = map[string][]time.Duration{}
		errs      []string
		loops     int
	)
	fail := func(msg string) {
		mu.Lock()
		errs = append(errs, msg)
		mu.Unlock()
	}
	// call sends one request, times it and checks its status; it returns
	// the body, nil after a failure (recorded).
	call := func(op, method, path, body string, status int) []byte {
		req, err := http.NewRequest(method, "http://strata/v1.50"+path, strings.NewReader(body))
		if err != nil {
			panic(err)
		}
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		var out []byte
		if err == nil {
			out, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		elapsed := time.Since(start)
		mu.Lock()
		latencies[op] = append(latencies[op], elapsed)
		mu.Unlock()
		switch {
		case err != nil:
			fail(fmt.Sprintf("%s: %v", op, err))
		case resp.StatusCode != status:
			fail(fmt.Sprintf("%s: status %d: %s", op, resp.StatusCode, out))
		default:
			return out
		}
		return nil
	}
	file := oneFileTar(t, "load-test.txt", "written by the load test\n")
	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				var created struct {
					ID string `json:"Id"`
				}
				b := call("create", "POST", "/containers/create", `{"Image":"base:1"}`, http.StatusCreated)
				if b == nil {
					return // recorded; the other clients go on
				}
				if json.Unmarshal(b, &created) != nil || created.ID == "" {
					fail(fmt.Sprintf("create answered %s", b))
					return
				}
				ctr := "/containers/" + created.ID
				call("cp in", "PUT", ctr+"/archive?path=/tmp&noOverwriteDirNonDir=true", string(file), http.StatusOK)
				if b := call("diff", "GET", ctr+"/changes", "", http.StatusOK); b != nil &&
					!strings.Contains(string(b), `"/tmp/load-test.txt"`) {
					fail(fmt.Sprintf("diff of %s lacks the copied file: %s", created.ID, b))
				}
				call("rm", "DELETE", ctr+"?force=1&v=1", "", http.StatusNoContent)
				mu.Lock()
				loops++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("%d failed requests, e.g.:\n%s", len(errs), strings.Join(errs[:min(len(errs), 10)], "\n"))
	}

	b := call("list", "GET", "/containers/json?all=1", "", http.StatusOK)
	if string(bytes.TrimSpace(b)) != "[]" {
		t.Errorf("containers left: %s", b)
	}
	if mounts := mountPointsUnder(t, root); len(mounts) > 0 {
		t.Errorf("%d mounts left under the root, e.g. %v", len(mounts), mounts[:min(len(mounts), 5)])
	}
	layersAfter, driverAfter := storeLayers(t, root)
	if !slices.Equal(layersBefore, layersAfter) {
		t.Errorf("layers before: %v\nafter: %v", layersBefore, layersAfter)
	}
	if !slices.Equal(driverBefore, driverAfter) {
		t.Errorf("driver layers before: %v\nafter: %v", driverBefore, driverAfter)
	}

	t.Logf("%d clients, %s: %d create/cp/diff/rm loops", clients, duration, loops)
	for _, op := range []string{"create", "cp in", "diff", "rm"} {
		d := latencies[op]
		slices.Sort(d)
		if len(d) == 0 {
			continue
		}
		p := func(q int) time.Duration { return d[(len(d)-1)*q/100].Round(10 * time.Microsecond) }
		t.Logf("%-6s n=%-6d p50 %-10v p90 %-10v p99 %-10v max %v", op, len(d), p(50), p(90), p(99), d[len(d)-1].Round(10*time.Microsecond))
	}
}

// storeLayers lists the chain IDs of the store at root and the layer
// directories of its graph driver, each sorted. The store is opened as one
// more process on the root, next to the daemon.
func storeLayers(t *testing.T, root string) (chains, driverLayers []string) {
	t.Helper()
	s, err := store.Open(store.Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	layers, err := s.Layers().List()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		chains = append(chains, l.ChainID.String())
	}
	entries, err := os.ReadDir(filepath.Join(root, s.Driver().String()))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") && len(e.Name()) >= 64 {
			driverLayers = append(driverLayers, e.Name())
		}
	}
	slices.Sort(chains)
	return chains, driverLayers
}

// oneFileTar is a tar holding one regular file.
func oneFileTar(t *testing.T, name, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), ModTime: time.Now()}); err != nil {
		t.Fatal(err)
	}
	io.WriteString(tw, content)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// mountPointsUnder lists the mount points under dir, from this process's
// mountinfo (the daemon shares the mount namespace).
func mountPointsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}
