package devicemapper

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/moby/sys/mountinfo"
)

// layerTar is a layer tar of files (name → content; "" is a whiteout of
// the name).
func layerTar(t *testing.T, files map[string]string) *bytes.Reader {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, body := range files {
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}
		if body == "" {
			hdr = &tar.Header{Name: filepath.Join(filepath.Dir(name), ".wh."+filepath.Base(name)), Mode: 0o644, Typeflag: tar.TypeReg}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(b.Bytes())
}

func applyLayer(t *testing.T, d *Driver, id, parent string, files map[string]string) {
	t.Helper()
	if err := d.Create(id, parent, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ApplyDiff(id, parent, layerTar(t, files)); err != nil {
		t.Fatal(err)
	}
	if n, err := d.Mounted(id); err != nil || n != 0 {
		t.Fatalf("Mounted(%s) after ApplyDiff = %d, %v; want 0", id, n, err)
	}
}

// checkLayer mounts layer id and compares its files a, b and c with want
// ("" = absent).
func checkLayer(t *testing.T, d *Driver, id string, want map[string]string) {
	t.Helper()
	dir, err := d.Get(id, "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put(id)
	for _, name := range []string{"a", "b", "c"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			got, err = nil, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want[name] {
			t.Errorf("layer %s: file %s = %q, want %q", id, name, got, want[name])
		}
	}
}

func deviceOf(t *testing.T, d *Driver, id string) uint32 {
	t.Helper()
	info, err := d.load(id)
	if err != nil {
		t.Fatal(err)
	}
	return info.DeviceID
}

// TestLoadHandsOverMounts applies a chain as a load does: each child takes
// over its parent's mounted device and the parent keeps the snapshot, and
// every layer holds its own content afterwards.
func TestLoadHandsOverMounts(t *testing.T) {
	root := t.TempDir()
	d := open(t, root)
	applyLayer(t, d, "l0", "", map[string]string{"a": "a0", "b": "b0"})
	live := deviceOf(t, d, "l0")
	applyLayer(t, d, "l1", "l0", map[string]string{"a": "a1", "c": "c1"})
	if got := deviceOf(t, d, "l1"); got != live {
		t.Errorf("l1 has device %d, want l0's mounted device %d", got, live)
	}
	if mounted, err := mountinfo.Mounted(d.mountDir("l0")); err != nil || mounted {
		t.Errorf("l0's mount point after the hand-over: mounted %v, %v", mounted, err)
	}
	applyLayer(t, d, "l2", "l1", map[string]string{"b": ""})
	if got := deviceOf(t, d, "l2"); got != live {
		t.Errorf("l2 has device %d, want %d", got, live)
	}
	// A create of another chain releases the kept layer.
	if err := d.Create("other", "l0", nil); err != nil {
		t.Fatal(err)
	}
	if mounted, err := mountinfo.Mounted(d.mountDir("l2")); err != nil || mounted {
		t.Errorf("l2 still mounted after a create elsewhere: %v, %v", mounted, err)
	}

	checkLayer(t, d, "l0", map[string]string{"a": "a0", "b": "b0"})
	checkLayer(t, d, "l1", map[string]string{"a": "a1", "b": "b0", "c": "c1"})
	checkLayer(t, d, "l2", map[string]string{"a": "a1", "c": "c1"})
	checkLayer(t, d, "other", map[string]string{"a": "a0", "b": "b0"})

	// The last layer of a load, kept, can be removed at once.
	applyLayer(t, d, "l3", "l2", map[string]string{"c": "c3"})
	for _, id := range []string{"l3", "l2", "l1", "other", "l0"} {
		if err := d.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	if st := poolStatus(t, d); len(st.Active) != 0 {
		t.Errorf("devices still active: %v", st.Active)
	}
	if out, err := d.pool.Check(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestKeptReleased: a kept layer is unmounted by Cleanup, and by a Get of
// it in another driver (another process) without harm.
func TestKeptReleased(t *testing.T) {
	root := t.TempDir()
	d := open(t, root)
	applyLayer(t, d, "l0", "", map[string]string{"a": "a0"})
	other := open(t, root)
	checkLayer(t, other, "l0", map[string]string{"a": "a0"})
	// l0 is no longer ours to hand over: the child gets a snapshot.
	applyLayer(t, d, "l1", "l0", map[string]string{"b": "b1"})
	checkLayer(t, d, "l0", map[string]string{"a": "a0"})
	if err := d.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if mounted, err := mountinfo.Mounted(d.mountDir("l1")); err != nil || mounted {
		t.Errorf("l1 mounted after Cleanup: %v, %v", mounted, err)
	}
	checkLayer(t, other, "l1", map[string]string{"a": "a0", "b": "b1"})
}

// TestHandOverCrash crashes a hand-over before and after the snapshot's
// commit: the next start gives the parent its device back, or keeps the
// hand-over, and every layer holds its content.
func TestHandOverCrash(t *testing.T) {
	for _, committed := range []bool{false, true} {
		root := t.TempDir()
		d := open(t, root)
		applyLayer(t, d, "l0", "", map[string]string{"a": "a0"})
		d.releaseKept("")
		live := deviceOf(t, d, "l0")
		l0, _ := d.load("l0")
		const snap = 100
		tx := transaction{Op: "create", ID: "l1", DeviceID: snap, TransactionID: poolStatus(t, d).TransactionID + 1,
			Parent: "l0", ParentDevice: live}
		if err := d.record(tx, "l0", deviceInfo{DeviceID: live, Size: l0.Size, TransactionID: tx.TransactionID}); err != nil {
			t.Fatal(err)
		}
		l0.DeviceID = snap
		if err := writeJSON(filepath.Join(d.metaDir("l0"), "device"), l0, true); err != nil {
			t.Fatal(err)
		}
		if committed {
			if err := d.pool.CreateSnapTx(snap, live, tx.TransactionID-1, tx.TransactionID); err != nil {
				t.Fatal(err)
			}
		}
		d = restart(t, d, root)
		if !committed {
			if d.Exists("l1") || deviceOf(t, d, "l0") != live {
				t.Fatalf("uncommitted hand-over: l1 exists %v, l0 has device %d, want %d", d.Exists("l1"), deviceOf(t, d, "l0"), live)
			}
			checkLayer(t, d, "l0", map[string]string{"a": "a0"})
			continue
		}
		if !d.Exists("l1") || deviceOf(t, d, "l1") != live || deviceOf(t, d, "l0") != snap {
			t.Fatalf("committed hand-over: l1 exists %v, devices l0 %d l1 %d", d.Exists("l1"), deviceOf(t, d, "l0"), deviceOf(t, d, "l1"))
		}
		checkLayer(t, d, "l0", map[string]string{"a": "a0"})
		checkLayer(t, d, "l1", map[string]string{"a": "a0"})
		if out, err := d.pool.Check(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
}
