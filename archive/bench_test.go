package archive

import (
	"bytes"
	"fmt"
	"io"
	"testing"
)

// BenchmarkApply extracts a layer shaped like a distribution's: many
// small files in a few hundred directories and some big ones.
func BenchmarkApply(b *testing.B) {
	var entries []entry
	small := string(bytes.Repeat([]byte("x"), 4000))
	big := string(bytes.Repeat([]byte("y"), 8<<20))
	for d := range 200 {
		entries = append(entries, dir(fmt.Sprintf("usr/share/d%03d/", d)))
		for f := range 50 {
			entries = append(entries, file(fmt.Sprintf("usr/share/d%03d/f%02d", d, f), small))
		}
	}
	for f := range 8 {
		entries = append(entries, file(fmt.Sprintf("usr/lib/big%d", f), big))
	}
	layer := tarOf(b, entries...)
	b.SetBytes(int64(len(layer)))
	for b.Loop() {
		if _, err := Apply(b.TempDir(), bytes.NewReader(layer), ApplyOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteDir writes the tree BenchmarkApply extracts.
func BenchmarkWriteDir(b *testing.B) {
	src := b.TempDir()
	var entries []entry
	for d := range 100 {
		for f := range 50 {
			entries = append(entries, file(fmt.Sprintf("d%03d/f%02d", d, f), "content"))
		}
	}
	if _, err := Apply(src, bytes.NewReader(tarOf(b, entries...)), ApplyOptions{}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := WriteDir(io.Discard, src, WriteOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
