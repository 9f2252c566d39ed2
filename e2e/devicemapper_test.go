package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDevicemapperSpaceComesBack is issue 7's space check with the CLI: the
// multi-layer test image loaded on devicemapper, 50 containers made of it
// and written in, one committed, then all of them removed and the commit
// with them: the pool's used data blocks come back to where they were after
// the load (moby #3182), and thin_check passes on the pool.
func TestDevicemapperSpaceComesBack(t *testing.T) {
	dir := images(t)
	root := newRoot(t)
	dm := func(args ...string) string {
		return strata(t, root, append([]string{"--storage-driver", "devicemapper"}, args...)...)
	}
	pool := filepath.Join(root, "devicemapper", "pool")
	t.Cleanup(func() { // the pool's server outlives the commands that used it
		strata(t, root, "thin", "--pool", pool, "pool", "stop")
	})
	dm("load", "-q", "-i", filepath.Join(dir, "app.tar"))
	before := usedDataBlocks(t, root, pool)

	const n, written = 50, 1 << 20
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strings.TrimSpace(dm("create", "app:1"))
		mnt := strings.TrimSpace(dm("mount", ids[i]))
		data := bytes.Repeat([]byte{byte(i)}, written)
		if err := os.WriteFile(filepath.Join(mnt, "written"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		dm("umount", ids[i])
	}
	const maxBlockSize = 1 << 20 // dm-thin's largest data block
	if during := usedDataBlocks(t, root, pool); during < before+n*written/maxBlockSize {
		t.Fatalf("used data blocks: %d after the load, %d with %d containers of %d bytes each", before, during, n, written)
	}
	dm("commit", ids[0], "committed:1")
	dm(append([]string{"rm"}, ids...)...)
	dm("rmi", "committed:1")
	if after := usedDataBlocks(t, root, pool); after != before {
		t.Errorf("used data blocks: %d after the load, %d once the containers and the commit are gone", before, after)
	}
	strata(t, root, "thin", "--pool", pool, "pool", "check")
}

var poolStatusBlocks = regexp.MustCompile(`Data space:.*\((\d+)/\d+ blocks\)`)

// usedDataBlocks reads the used data blocks from `strata thin pool status`.
func usedDataBlocks(t *testing.T, root, pool string) int {
	t.Helper()
	out := strata(t, root, "thin", "--pool", pool, "pool", "status")
	m := poolStatusBlocks.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no data space line in:\n%s", out)
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return n
}
