package archive

import (
	"bytes"
	"os"
	"testing"
)

// FuzzApply feeds Apply arbitrary tars and checks that nothing is written
// outside the target, whatever the input and the whiteout format.
func FuzzApply(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root: the layers chown and make devices")
	}
	seeds := [][]entry{
		{dir("etc/"), file("etc/passwd", "root"), symlink("lib", "usr/lib"), file("lib/x", "x"), hardlink("y", "etc/passwd")},
		{symlink("escape", "../outside"), file("escape/evil", "x")},
		{symlink("up", "/.."), file("up/outside/sentinel", "x"), hardlink("h", "../outside/sentinel")},
		{dir("d/"), file("d/.wh..wh..opq", ""), file(".wh.d", ""), file("../outside/.wh.sentinel", "")},
		{symlink("a", "b/../.."), file("a/outside/evil", "x"), file(".wh..wh.plnk/1", "p"), hardlink("b", ".wh..wh.plnk/1")},
	}
	for i, entries := range seeds {
		f.Add(byte(i%3), tarOf(f, entries...))
	}
	f.Fuzz(func(t *testing.T, format byte, layer []byte) {
		s := newSandbox(t)
		Apply(s.root, bytes.NewReader(layer), ApplyOptions{Whiteouts: WhiteoutFormat(format % 3)})
		s.check(t)
	})
}
