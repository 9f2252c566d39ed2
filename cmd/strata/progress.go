package main

import (
	"os"
	"sync"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/strata-storage/strata/imagearchive"
)

// bars draws one progress bar per layer on stderr when stdout is a terminal,
// as docker load does; otherwise it stays quiet.
type bars struct {
	p    *mpb.Progress
	mu   sync.Mutex
	bars map[string]*mpb.Bar
}

func newBars(quiet bool) *bars {
	if quiet || !term.IsTerminal(int(os.Stdout.Fd())) {
		return &bars{}
	}
	return &bars{p: mpb.New(mpb.WithOutput(os.Stderr), mpb.WithWidth(40)), bars: map[string]*mpb.Bar{}}
}

// progress returns the imagearchive.Progress to pass, nil when quiet.
func (b *bars) progress() imagearchive.Progress {
	if b.p == nil {
		return nil
	}
	return b
}

func (b *bars) wait() {
	if b.p != nil {
		b.p.Wait()
	}
}

func (b *bars) Start(id string, size int64) {
	if size < 0 {
		size = 0
	}
	name := id
	if len(name) > 19 {
		name = name[len(name)-12:]
	}
	bar := b.p.AddBar(size,
		mpb.PrependDecorators(decor.Name(name+" ", decor.WCSyncSpaceR)),
		mpb.AppendDecorators(decor.Counters(decor.SizeB1000(0), "% .1f / % .1f")),
	)
	b.mu.Lock()
	b.bars[id] = bar
	b.mu.Unlock()
}

func (b *bars) Advance(id string, n int64) {
	b.mu.Lock()
	bar := b.bars[id]
	b.mu.Unlock()
	if bar != nil {
		bar.IncrInt64(n)
	}
}

func (b *bars) Done(id string) {
	b.mu.Lock()
	bar := b.bars[id]
	b.mu.Unlock()
	if bar != nil {
		bar.SetTotal(-1, true)
	}
}
