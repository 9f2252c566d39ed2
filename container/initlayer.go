package container

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/layer"
)

// initEntries are the mount points and files a runtime binds over, which
// Docker puts in every container's init layer: directories 0755, empty
// files 0755 (Docker creates them with that mode), all owned by root.
var initEntries = []struct {
	path   string
	kind   byte   // tar type flag
	target string // of the symlink
}{
	{"/dev/pts", tar.TypeDir, ""},
	{"/dev/shm", tar.TypeDir, ""},
	{"/proc", tar.TypeDir, ""},
	{"/sys", tar.TypeDir, ""},
	{"/.dockerenv", tar.TypeReg, ""},
	{"/etc/resolv.conf", tar.TypeReg, ""},
	{"/etc/hosts", tar.TypeReg, ""},
	{"/etc/hostname", tar.TypeReg, ""},
	{"/dev/console", tar.TypeReg, ""},
	{"/etc/mtab", tar.TypeSymlink, "/proc/mounts"},
}

// initLayer returns the layer tar of c's init layer, written as a tar so
// that every driver gets it through ApplyDiff, its entries dated now.
//
// Its content depends only on the image, and finding it mounts the image,
// which costs more than the rest of a Create: so the entries are computed
// once per image top layer and kept in init/<chain ID>.tar (a few KB per
// image, removed by Recover once the layer is gone). A chain ID names the
// content of the whole stack, so the file holds whatever driver layer
// carries that chain.
func (s *Store) initLayer(c Container) (io.Reader, error) {
	if c.TopCache == "" {
		hdrs, err := initHeaders("")
		if err != nil {
			return nil, err
		}
		return initTar(hdrs, time.Now())
	}
	if c.Top != "" {
		if hdrs, err := readInitTar(s.initCachePath(c.Top)); err == nil {
			return initTar(hdrs, time.Now())
		}
	}
	image, err := s.driver.Get(c.TopCache, "")
	if err != nil {
		return nil, err
	}
	hdrs, err := initHeaders(image)
	s.driver.Put(c.TopCache)
	if err != nil {
		return nil, err
	}
	buf, err := initTar(hdrs, time.Now())
	if err == nil && c.Top != "" {
		// Without the cache, the next Create only takes longer: its
		// errors do not fail this one.
		_ = writeFileSync(s.initCachePath(c.Top), buf.Bytes())
	}
	return buf, err
}

// initHeaders returns the entries of the init layer on top of the image
// mounted at image ("" = no image), without times. It reproduces what
// Docker's setup does in the mounted image: a non-directory in the way of
// an entry, or of one of its parents, is replaced; an existing directory is
// left as it is; a parent directory keeps the image's mode and owner, as an
// overlay copy-up would.
func initHeaders(image string) ([]*tar.Header, error) {
	// lstat returns what the image has at p, ok false when nothing; the
	// caller only asks for paths whose parents are real directories, so
	// no symlink of the image is ever followed.
	lstat := func(p string) (st unix.Stat_t, ok bool, err error) {
		if image == "" {
			return st, false, nil
		}
		err = unix.Lstat(image+p, &st)
		if errors.Is(err, unix.ENOENT) {
			return st, false, nil
		}
		return st, err == nil, err
	}

	var hdrs []*tar.Header
	done := map[string]bool{}
	realDir := map[string]bool{"/": image != ""}
	for _, e := range initEntries {
		var parents []string
		for d := path.Dir(e.path); d != "/"; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if done[d] {
				continue
			}
			done[d] = true
			hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}
			if realDir[path.Dir(d)] {
				st, ok, err := lstat(d)
				if err != nil {
					return nil, err
				}
				if ok && st.Mode&unix.S_IFMT == unix.S_IFDIR {
					realDir[d] = true
					hdr.Mode, hdr.Uid, hdr.Gid = int64(st.Mode&0o7777), int(st.Uid), int(st.Gid)
				}
			}
			hdrs = append(hdrs, hdr)
		}
		if realDir[path.Dir(e.path)] {
			st, ok, err := lstat(e.path)
			if err != nil {
				return nil, err
			}
			if ok && st.Mode&unix.S_IFMT == unix.S_IFDIR {
				continue
			}
		}
		hdr := &tar.Header{Typeflag: e.kind, Name: e.path, Mode: 0o755, Linkname: e.target}
		if e.kind == tar.TypeSymlink {
			hdr.Mode = 0o777
		}
		hdrs = append(hdrs, hdr)
	}
	return hdrs, nil
}

// initTar writes hdrs as a layer tar of empty entries modified at now.
func initTar(hdrs []*tar.Header, now time.Time) (*bytes.Buffer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		hdr := &tar.Header{
			Typeflag: h.Typeflag,
			Name:     strings.TrimPrefix(h.Name, "/"),
			Linkname: h.Linkname,
			Mode:     h.Mode,
			Uid:      h.Uid,
			Gid:      h.Gid,
			ModTime:  now,
			Format:   tar.FormatPAX,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}

// readInitTar returns the entries of a cached init tar. A file that is not
// a complete tar of empty entries is refused, so that it is made again.
func readInitTar(p string) ([]*tar.Header, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var hdrs []*tar.Header
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if hdr.Size != 0 {
			return nil, fmt.Errorf("%s: %s has content", p, hdr.Name)
		}
		hdrs = append(hdrs, hdr)
	}
	if len(hdrs) == 0 {
		return nil, fmt.Errorf("%s: empty", p)
	}
	return hdrs, nil
}

func (s *Store) initCachePath(chainID digest.Digest) string {
	return filepath.Join(s.initCache, chainID.Encoded()+".tar")
}

// writeFileSync writes data to p through a temporary file that is synced,
// then renamed, so that p is either absent or whole.
func writeFileSync(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), tmpPrefix+"*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// tmpPrefix names the files of the init cache that are being written.
const tmpPrefix = ".tmp-"

// pruneInitCache removes the cached init tars of layers that are no longer
// recorded, and temporary files that a crash left; one that a concurrent
// Create is still writing is lost to it, which only costs its next Create
// a mount. It also removes the init locks of driver layers that are gone.
func (s *Store) pruneInitCache() error {
	entries, err := os.ReadDir(s.initCache)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(entries) == 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("init layer cache: %w", err)
	}
	var stale []string
	err = s.db.View(func(tx *bolt.Tx) error {
		for _, e := range entries {
			if parent, ok := strings.CutSuffix(e.Name(), lockSuffix); ok {
				if parent != string(initKey("")) && !s.driver.Exists(parent) {
					s.removeInitLock(parent)
				}
				continue
			}
			hex, ok := strings.CutSuffix(e.Name(), ".tar")
			if !ok || strings.HasPrefix(e.Name(), tmpPrefix) {
				stale = append(stale, e.Name())
				continue
			}
			_, err := layer.Lookup(tx, digest.NewDigestFromEncoded(digest.SHA256, hex))
			if errors.Is(err, errdefs.ErrNotFound) {
				stale = append(stale, e.Name())
			} else if err != nil {
				return err
			}
		}
		return nil
	})
	for _, name := range stale {
		if err := os.Remove(filepath.Join(s.initCache, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("init layer cache: %w", err)
		}
	}
	return err
}
