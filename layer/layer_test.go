package layer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/errdefs"
)

func TestChainID(t *testing.T) {
	a, b := digest.FromString("a"), digest.FromString("b")
	if got := ChainID(nil); got != "" {
		t.Errorf("ChainID(nil) = %q", got)
	}
	if got := ChainID([]digest.Digest{a}); got != a {
		t.Errorf("base chain ID = %s, want the diff ID", got)
	}
	want := digest.FromString(a.String() + " " + b.String())
	if got := ChainID([]digest.Digest{a, b}); got != want {
		t.Errorf("ChainID(a, b) = %s, want %s", got, want)
	}
}

func TestTarStreamIsByteExact(t *testing.T) {
	raw := richTar(t)
	for _, c := range []struct {
		name string
		blob []byte
	}{{"plain", raw}, {"gzip", gzipped(t, raw)}, {"zstd", zstded(t, raw)}} {
		t.Run(c.name, func(t *testing.T) {
			forEachDriver(t, func(t *testing.T, s *testStore) {
				lease := newLease(t, s)
				layers, err := s.RegisterChain(t.Context(), lease, "", []Source{source(raw, c.blob)})
				if err != nil {
					t.Fatal(err)
				}
				l := layers[0]
				if l.DiffID != digest.FromBytes(raw) || l.ChainID != l.DiffID || l.Parent != "" {
					t.Errorf("layer %+v: wrong identity", l)
				}
				if l.TarSize != int64(len(raw)) {
					t.Errorf("TarSize = %d, want %d", l.TarSize, len(raw))
				}
				if got, err := s.Get(l.ChainID); err != nil || got != l {
					t.Errorf("Get = %+v, %v; want %+v", got, err, l)
				}
				got := tarStreamBytes(t, s, l.ChainID)
				if digest.FromBytes(got) != l.DiffID {
					t.Errorf("TarStream digest %s, want the diff ID %s", digest.FromBytes(got), l.DiffID)
				}
				if !bytes.Equal(got, raw) {
					t.Errorf("TarStream gave %d bytes, want the %d registered", len(got), len(raw))
				}
			})
		})
	}
}

func TestRegisterChainOnTopAndSkip(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		base := makeTar(t, []entry{file("base", "1")}, 0)
		mid := makeTar(t, []entry{file("mid", "2")}, 0)
		top := makeTar(t, []entry{file("top", "3")}, 0)
		lease := newLease(t, s)
		first, err := s.RegisterChain(t.Context(), lease, "", []Source{plain(base), plain(mid)})
		if err != nil {
			t.Fatal(err)
		}
		// The first two exist: their sources must not even be opened.
		unopenable := func(b []byte) Source {
			src := plain(b)
			src.Open = func() (io.ReadCloser, error) { return nil, errors.New("opened a layer that exists") }
			return src
		}
		all, err := s.RegisterChain(t.Context(), lease, "", []Source{unopenable(base), unopenable(mid), plain(top)})
		if err != nil {
			t.Fatal(err)
		}
		if all[0] != first[0] || all[1] != first[1] {
			t.Errorf("existing layers were registered again: %+v vs %+v", all[:2], first)
		}
		want := ChainID([]digest.Digest{digest.FromBytes(base), digest.FromBytes(mid), digest.FromBytes(top)})
		if all[2].ChainID != want || all[2].Parent != all[1].ChainID {
			t.Errorf("top layer %+v, want chain ID %s on %s", all[2], want, all[1].ChainID)
		}
		for _, l := range all {
			if got := tarStreamBytes(t, s, l.ChainID); digest.FromBytes(got) != l.DiffID {
				t.Errorf("layer %s: TarStream does not match its diff ID", l.ChainID)
			}
		}

		// A layer registered by Register on a parent, diff ID unknown.
		extra := makeTar(t, []entry{file("extra", "4")}, 1024)
		l, err := s.Register(t.Context(), lease, all[2].ChainID, bytes.NewReader(gzipped(t, extra)))
		if err != nil {
			t.Fatal(err)
		}
		if l.DiffID != digest.FromBytes(extra) || l.Parent != all[2].ChainID {
			t.Errorf("Register = %+v", l)
		}
		if len(driverLayers(t, s)) != 4 {
			t.Errorf("driver holds %d layers, want 4", len(driverLayers(t, s)))
		}
	})
}

func TestDiffIDMismatchLeavesNothing(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		good := makeTar(t, []entry{file("good", "1")}, 0)
		bad := plain(makeTar(t, []entry{file("bad", "2")}, 0))
		bad.DiffID = digest.FromString("something else")
		lease := newLease(t, s)
		_, err := s.RegisterChain(t.Context(), lease, "", []Source{plain(good), bad, plain(good)})
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("err = %v, want ErrInvalid", err)
		}
		t.Log(err)
		assertEmpty(t, s)
	})
}

func TestCorruptStreamLeavesNothing(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		raw := makeTar(t, []entry{file("a", string(bytes.Repeat([]byte("x"), 100000)))}, 0)
		blob := gzipped(t, raw)
		lease := newLease(t, s)
		_, err := s.RegisterChain(t.Context(), lease, "", []Source{source(raw, blob[:len(blob)/2])})
		if err == nil {
			t.Fatal("a truncated layer registered")
		}
		assertEmpty(t, s)
	})
}

// stallingReader serves head, then stalls until ctx is done and serves
// the rest: a slow network source.
type stallingReader struct {
	ctx     context.Context
	head    []byte
	rest    io.Reader
	reached chan struct{}
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if len(r.head) > 0 {
		n := copy(p, r.head)
		r.head = r.head[n:]
		return n, nil
	}
	if r.reached != nil {
		close(r.reached)
		r.reached = nil
		<-r.ctx.Done()
	}
	return r.rest.Read(p)
}

func TestCancelLeavesNothing(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *testStore) {
		raw := makeTar(t, []entry{file("a", "1"), file("b", "2")}, 0)
		ctx, cancel := context.WithCancel(t.Context())
		reached := make(chan struct{})
		src := plain(raw)
		src.Open = func() (io.ReadCloser, error) {
			return io.NopCloser(&stallingReader{ctx: ctx, head: raw[:600], rest: bytes.NewReader(raw[600:]), reached: reached}), nil
		}
		go func() { <-reached; cancel() }()
		lease := newLease(t, s)
		if _, err := s.RegisterChain(ctx, lease, "", []Source{src}); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		assertEmpty(t, s)
	})
}
