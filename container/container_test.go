package container_test

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/store"
)

// The container conformance cases: each runs on every driver.

func create(t *testing.T, s *store.Store, ref, name string) container.Container {
	t.Helper()
	c, err := s.CreateContainer(ref, container.CreateOptions{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// get mounts driver layer id for the test's duration.
func get(t *testing.T, s *store.Store, id string) string {
	t.Helper()
	dir, err := s.Driver().Get(id, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Driver().Put(id) })
	return dir
}

func TestInitLayerContent(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		// What the image has decides: its directories stay as they are,
		// its files in the way are replaced.
		etc := dir("etc", 0o700)
		etc.Uid, etc.Gid = 5, 6
		addImage(t, s, "distro", "sh", layerTar(t, etc, reg("etc/hosts"), reg("etc/mtab"), dir("proc", 0o555)))
		addImage(t, s, "bare", "sh", layerTar(t, reg("hello")))

		type want struct {
			typ    uint32
			mode   uint32
			uid    uint32
			target string
		}
		file, newDir := want{unix.S_IFREG, 0o755, 0, ""}, want{unix.S_IFDIR, 0o755, 0, ""}
		common := map[string]want{
			"/.dockerenv": file, "/etc/resolv.conf": file, "/etc/hosts": file, "/etc/hostname": file,
			"/dev": newDir, "/dev/console": file, "/dev/pts": newDir, "/dev/shm": newDir, "/sys": newDir,
			"/etc/mtab": {unix.S_IFLNK, 0o777, 0, "/proc/mounts"},
		}
		for _, tc := range []struct {
			image   string
			etc     want
			proc    want
			changed []string // what the init layer holds
		}{
			{"distro", want{unix.S_IFDIR, 0o700, 5, ""}, want{unix.S_IFDIR, 0o555, 0, ""},
				[]string{"/.dockerenv", "/dev", "/dev/console", "/dev/pts", "/dev/shm", "/etc", "/etc/hostname", "/etc/hosts", "/etc/mtab", "/etc/resolv.conf", "/sys"}},
			{"bare", newDir, newDir,
				[]string{"/.dockerenv", "/dev", "/dev/console", "/dev/pts", "/dev/shm", "/etc", "/etc/hostname", "/etc/hosts", "/etc/mtab", "/etc/resolv.conf", "/proc", "/sys"}},
		} {
			c := create(t, s, tc.image, "")
			root := get(t, s, c.InitID())
			expect := map[string]want{"/etc": tc.etc, "/proc": tc.proc}
			for p, w := range common {
				expect[p] = w
			}
			for p, w := range expect {
				var st unix.Stat_t
				if err := unix.Lstat(root+p, &st); err != nil {
					t.Errorf("%s: %s: %v", tc.image, p, err)
					continue
				}
				if st.Mode&unix.S_IFMT != w.typ || st.Mode&0o7777 != w.mode || st.Uid != w.uid {
					t.Errorf("%s: %s: mode %o owner %d, want %o owner %d", tc.image, p, st.Mode, st.Uid, w.typ|w.mode, w.uid)
				}
				if w.typ == unix.S_IFREG && st.Size != 0 {
					t.Errorf("%s: %s has %d bytes, want none", tc.image, p, st.Size)
				}
				if w.target != "" {
					if target, _ := os.Readlink(root + p); target != w.target {
						t.Errorf("%s: %s -> %q, want %q", tc.image, p, target, w.target)
					}
				}
			}

			changes, err := s.Driver().Changes(c.InitID(), c.TopCache)
			if err != nil {
				t.Fatal(err)
			}
			var paths []string
			for _, ch := range changes {
				paths = append(paths, ch.Path)
			}
			slices.Sort(paths)
			if !slices.Equal(paths, tc.changed) {
				t.Errorf("%s: init layer holds %q, want %q", tc.image, paths, tc.changed)
			}
			if rw, err := s.Driver().Changes(c.ID, c.InitID()); err != nil || len(rw) != 0 {
				t.Errorf("%s: fresh read-write layer holds %v, %v", tc.image, rw, err)
			}
		}
	})
}

func TestReadWriteIsolation(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		smallImage(t, s)
		a, b := create(t, s, "app:1", "one"), create(t, s, "app:1", "two")
		rootA := get(t, s, a.ID)
		if err := os.WriteFile(rootA+"/new", []byte("new"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(rootA+"/etc/passwd", []byte("changed"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(rootA + "/bin/app"); err != nil {
			t.Fatal(err)
		}
		for _, root := range []string{get(t, s, b.ID), get(t, s, a.TopCache)} {
			if _, err := os.Lstat(root + "/new"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s/new: %v, want it absent", root, err)
			}
			if data, err := os.ReadFile(root + "/etc/passwd"); string(data) != "etc/passwd" {
				t.Errorf("%s/etc/passwd = %q, %v", root, data, err)
			}
			if _, err := os.Lstat(root + "/bin/app"); err != nil {
				t.Errorf("%s/bin/app: %v", root, err)
			}
		}
	})
}

func TestRemoveWhileMountedRefused(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		smallImage(t, s)
		c := create(t, s, "app:1", "web")
		if _, err := s.Containers().Mount(c); err != nil {
			t.Fatal(err)
		}
		err := s.Containers().Remove(c, false)
		if !errors.Is(err, errdefs.ErrInUse) || !strings.Contains(err.Error(), "(use -f)") {
			t.Fatalf("remove while mounted: err = %v, want ErrInUse", err)
		}
		if _, err := s.Containers().Get("web"); err != nil {
			t.Fatalf("refused removal lost the container: %v", err)
		}
		if err := s.Containers().Remove(c, true); err != nil {
			t.Fatalf("forced removal: %v", err)
		}
		if _, err := s.Containers().Get(c.ID); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("removed container still found: %v", err)
		}
		for _, id := range []string{c.ID, c.InitID()} {
			if s.Driver().Exists(id) {
				t.Errorf("driver layer %s left behind", id)
			}
		}
		// The name is free again.
		create(t, s, "app:1", "web")
	})
}

func TestMountSharedByTwoUsers(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		smallImage(t, s)
		c := create(t, s, "app:1", "")
		first, err := s.Containers().Mount(c)
		if err != nil {
			t.Fatal(err)
		}
		second, err := s.Containers().Mount(c)
		if err != nil {
			t.Fatal(err)
		}
		if first != second {
			t.Fatalf("two mounts at %s and %s, want one", first, second)
		}
		if err := os.WriteFile(filepath.Join(first, "shared"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		mounted := func(want int) {
			t.Helper()
			if n, err := s.Driver().Mounted(c.ID); err != nil || n != want {
				t.Fatalf("Mounted = %d, %v; want %d", n, err, want)
			}
		}
		mounted(2)
		if err := s.Containers().Unmount(c); err != nil {
			t.Fatal(err)
		}
		mounted(1)
		if _, err := os.Stat(filepath.Join(second, "etc/passwd")); err != nil {
			t.Errorf("root gone while a user holds it: %v", err)
		}
		if err := s.Containers().Unmount(c); err != nil {
			t.Fatal(err)
		}
		mounted(0)
		if err := s.Containers().Remove(c, false); err != nil {
			t.Errorf("remove after the last unmount: %v", err)
		}
	})
}

func TestNamesRules(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		smallImage(t, s)
		for _, name := range []string{"a", "-x", "_x", "x y", "/", "x/y", "é1", "x:1"} {
			if _, err := s.CreateContainer("app:1", container.CreateOptions{Name: name}); !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("name %q: err = %v, want ErrInvalid", name, err)
			}
		}
		valid := create(t, s, "app:1", "/web.1_x-Y")
		if valid.Name != "web.1_x-Y" {
			t.Errorf("name %q, want it without the leading /", valid.Name)
		}
		for _, dup := range []string{"web.1_x-Y", "/web.1_x-Y"} {
			_, err := s.CreateContainer("app:1", container.CreateOptions{Name: dup})
			want := `Conflict. The container name "/web.1_x-Y" is already in use by container "` + valid.ID + `"`
			if !errors.Is(err, errdefs.ErrExists) || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("duplicate %q: err = %v, want %s", dup, err, want)
			}
		}
		generated := regexp.MustCompile(`^[a-z]+_[a-z]+[0-9]?$`)
		seen := map[string]bool{valid.Name: true}
		for range 5 {
			c := create(t, s, "app:1", "")
			if !generated.MatchString(c.Name) || seen[c.Name] {
				t.Errorf("generated name %q: not adjective_surname or not unique", c.Name)
			}
			seen[c.Name] = true
		}
		for _, ref := range []string{valid.ID, valid.ID[:12], "web.1_x-Y", "/web.1_x-Y"} {
			if c, err := s.Containers().Get(ref); err != nil || c.ID != valid.ID {
				t.Errorf("Get(%q) = %s, %v", ref, c.ID, err)
			}
		}
		if _, err := s.Containers().Get("nothing"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Get(nothing): %v", err)
		}
		if _, err := s.Containers().Get(""); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Get(\"\"): %v", err)
		}
		list, err := s.Containers().List()
		if err != nil || len(list) != 6 || list[0].Created.Before(list[5].Created) {
			t.Errorf("List: %d containers, %v; want 6, newest first", len(list), err)
		}
	})
}

func TestRmiInUse(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		id := smallImage(t, s)
		c := create(t, s, "app:1", "")
		short := id.Encoded()[:12]

		_, err := s.RemoveImage("app:1", store.RemoveImageOptions{})
		want := `conflict: unable to remove repository reference "app:1" (must force) - container ` + c.ID[:12] + ` is using its referenced image ` + short
		if !errors.Is(err, errdefs.ErrInUse) || errdefs.Message(err) != want {
			t.Errorf("rmi tag: %v\nwant %s", err, want)
		}
		_, err = s.RemoveImage(short, store.RemoveImageOptions{})
		want = "conflict: unable to delete " + short + " (must be forced) - image is being used by stopped container " + c.ID[:12]
		if !errors.Is(err, errdefs.ErrInUse) || errdefs.Message(err) != want {
			t.Errorf("rmi ID: %v\nwant %s", err, want)
		}
		if _, err := s.Images().Resolve("app:1"); err != nil {
			t.Fatalf("refused rmi removed the tag: %v", err)
		}

		// Another tag can go: the image keeps one.
		if err := s.Images().Tag(id, "app:2"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RemoveImage("app:2", store.RemoveImageOptions{}); err != nil {
			t.Errorf("rmi of a second tag: %v", err)
		}

		removed, err := s.RemoveImage("app:1", store.RemoveImageOptions{Force: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(removed) != 2 || removed[0].Untagged == "" || removed[1].Deleted != id.String() {
			t.Errorf("rmi -f removed %+v, want the tag and the image only", removed)
		}
		// The layers stay while the container lives, across restarts.
		s = openStore(t, s.Root(), s.Driver().String())
		if _, err := s.Layers().Get(c.Top); err != nil || !s.Driver().Exists(c.TopCache) {
			t.Fatalf("the container's image layer went: %v", err)
		}
		root, err := s.Driver().Get(c.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(root + "/etc/app.conf"); err != nil {
			t.Errorf("container root lost its image's files: %v", err)
		}
		s.Driver().Put(c.ID)
		if err := s.RemoveContainer(c, false); err != nil {
			t.Fatal(err)
		}
		if layers, err := s.Layers().List(); err != nil || len(layers) != 0 {
			t.Errorf("layers left after the last user went: %v, %v", layers, err)
		}
		if s.Driver().Exists(c.TopCache) {
			t.Errorf("driver layer %s left", c.TopCache)
		}
	})
}

func TestSizesInspectAndRestart(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		id := smallImage(t, s)
		c := create(t, s, "app:1", "web")
		root := get(t, s, c.ID)
		if err := os.WriteFile(root+"/data", []byte("12345"), 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := s.Images().Get(id)
		if err != nil {
			t.Fatal(err)
		}
		imageSize, err := s.ImageSize(img)
		if err != nil {
			t.Fatal(err)
		}
		rw, rootfs, err := s.ContainerSize(c)
		if err != nil || rw != 5 || rootfs != imageSize+5 {
			t.Errorf("sizes %d, %d, %v; want 5, %d", rw, rootfs, err, imageSize+5)
		}

		s = openStore(t, s.Root(), s.Driver().String())
		c, err = s.Containers().Get("web")
		if err != nil {
			t.Fatal(err)
		}
		in, err := s.InspectContainer(c, true)
		if err != nil {
			t.Fatal(err)
		}
		if in.ID != c.ID || in.Name != "/web" || in.Image != id || in.Path != "/bin/app" || len(in.Args) != 0 ||
			in.State.Status != "created" || in.Config.Image != "app:1" || in.Config.Hostname != c.ID[:12] ||
			in.Config.Env[0] != "PATH=/bin" || in.SizeRw == nil || *in.SizeRw != 5 || in.Driver != s.Driver().String() {
			t.Errorf("inspect: %+v", in)
		}
		if s.Driver().String() == "overlay" && in.GraphDriver.Data["UpperDir"] == "" {
			t.Errorf("inspect: overlay data %v has no UpperDir", in.GraphDriver.Data)
		}
	})
}

// TestInitLayerShared checks that the containers of one image share one
// init layer, made by the first (even when several are created at once) and
// removed with the last.
func TestInitLayerShared(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		smallImage(t, s)
		cs := make([]container.Container, 8)
		errs := make([]error, len(cs))
		var wg sync.WaitGroup
		for i := range cs {
			wg.Go(func() { cs[i], errs[i] = s.CreateContainer("app:1", container.CreateOptions{}) })
		}
		wg.Wait()
		for i, c := range cs {
			if errs[i] != nil {
				t.Fatalf("concurrent create %d: %v", i, errs[i])
			}
			if c.InitID() != cs[0].InitID() {
				t.Fatalf("init layers %s and %s for one image", c.InitID(), cs[0].InitID())
			}
		}
		init := cs[0].InitID()
		if got := initLayersOnDisk(t, s); !slices.Equal(got, []string{init}) {
			t.Errorf("init layers on disk %v, want only %s: the losers of the race left theirs", got, init)
		}
		for _, c := range cs[1:] {
			if err := s.RemoveContainer(c, false); err != nil {
				t.Fatal(err)
			}
		}
		if !s.Driver().Exists(init) {
			t.Fatal("the init layer went while a container uses it")
		}
		if _, err := s.Containers().Changes(cs[0]); err != nil {
			t.Fatal(err)
		}
		if err := s.RemoveContainer(cs[0], false); err != nil {
			t.Fatal(err)
		}
		if got := initLayersOnDisk(t, s); len(got) != 0 {
			t.Errorf("init layers %v left after the image's last container", got)
		}
		if c := create(t, s, "app:1", ""); c.InitID() == init {
			t.Errorf("a removed init layer's id %s was used again", init)
		}
	})
}

// initLayersOnDisk returns the names of init layers found in the driver's
// directory (any driver keeps a layer's id as a file name at most two
// levels down).
func initLayersOnDisk(t *testing.T, s *store.Store) []string {
	t.Helper()
	var found []string
	root := filepath.Join(s.Root(), s.Driver().String())
	for _, pattern := range []string{"*", "*/*"} {
		matches, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range matches {
			if name := filepath.Base(m); strings.Contains(name, "-init-") && !slices.Contains(found, name) {
				found = append(found, name)
			}
		}
	}
	slices.Sort(found)
	return found
}

// TestInitLayerChurn: creates and removals of the only containers of an
// image, at once, keep dropping and making its init layer; none may fail
// (a create once lost races against them) and nothing may be left.
func TestInitLayerChurn(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		smallImage(t, s)
		errs := make(chan error, 4)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range 10 {
					c, err := s.CreateContainer("app:1", container.CreateOptions{})
					if err == nil {
						err = s.RemoveContainer(c, false)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if got := initLayersOnDisk(t, s); len(got) != 0 {
			t.Errorf("init layers %v left after the image's last container", got)
		}
	})
}

// TestStorageOptReachesDriver: docker create --storage-opt goes to the
// driver's read-write layer, which refuses what it does not know, and a
// refused create leaves nothing behind.
func TestStorageOptReachesDriver(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *store.Store) {
		smallImage(t, s)
		_, err := s.CreateContainer("app:1", container.CreateOptions{StorageOpt: map[string]string{"no-such-option": "1"}})
		if err == nil {
			t.Fatal("an unknown storage option was taken")
		}
		if cs, _ := s.Containers().List(); len(cs) != 0 {
			t.Errorf("a refused create left %d containers", len(cs))
		}
		if got := initLayersOnDisk(t, s); len(got) != 0 {
			t.Errorf("a refused create left init layers %v", got)
		}
	})
}
