package overlay

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMountLegacy runs the fallback for kernels without lowerdir+ on this
// one: relative short links after a per-thread chdir.
func TestMountLegacy(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting needs root")
	}
	if err := kernelHasOverlay(); err != nil {
		t.Skip(err)
	}
	root := t.TempDir()
	var lowers []string
	for i := range 3 {
		diff := filepath.Join(root, fmt.Sprint("layer", i), "diff")
		if err := os.MkdirAll(diff, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(diff, "f"), []byte(fmt.Sprint(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(root, "l", strings.Repeat(fmt.Sprint(i), 26))
		os.MkdirAll(filepath.Dir(link), 0o700)
		if err := os.Symlink(filepath.Join("..", fmt.Sprint("layer", i), "diff"), link); err != nil {
			t.Fatal(err)
		}
		lowers = append([]string{link}, lowers...) // nearest first
	}
	for _, sub := range []string{"top/diff", "top/work", "top/merged"} {
		if err := os.MkdirAll(filepath.Join(root, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	merged := filepath.Join(root, "top/merged")
	if err := mountLegacy(root, merged, lowers, filepath.Join(root, "top/diff"), filepath.Join(root, "top/work")); err != nil {
		t.Fatal(err)
	}
	defer unmount(merged)
	if b, err := os.ReadFile(filepath.Join(merged, "f")); err != nil || string(b) != "2" {
		t.Errorf("f through the mount: %q, %v; want the nearest layer's 2", b, err)
	}
	if wd, _ := os.Getwd(); wd == root {
		t.Error("the process's working directory moved")
	}

	many := make([]string, 200)
	for i := range many {
		many[i] = lowers[0]
	}
	if err := mountLegacy(root, merged, many, "", ""); err == nil || !strings.Contains(err.Error(), "one page") {
		t.Errorf("200 lowers through mount(2): %v, want a one-page error", err)
	}
}
