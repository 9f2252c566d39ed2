package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// WriteDir writes the tree at dir as a layer tar to w: entries in lexical
// order, each directory before its content, names relative ("etc/",
// "etc/passwd"), hard links as links to the first name, nanosecond mtimes
// and xattrs as PAX records. The aufs metadata directories are left out.
func WriteDir(w io.Writer, dir string, opts WriteOptions) error {
	return writeDir(newTarWriter(w), dir, opts)
}

// EntryWriter is a writer that is told where the entries of the tar written
// to it lie, as tar-split records them: Entry comes after the header (and the
// padding before it) of each entry is written, before its content.
type EntryWriter interface {
	io.Writer
	Entry(name string, size int64) error
}

// CopyDir writes the tree at src to w as WriteDir does and, in the same
// pass, extracts each entry it writes into dst as Apply would extract that
// tar: a commit makes its new layer from the container's files without
// parsing the tar it wrote. It returns what Apply returns.
func CopyDir(w EntryWriter, src, dst string, wopts WriteOptions, aopts ApplyOptions) (int64, error) {
	a, err := newApplier(dst, aopts)
	if err != nil {
		return 0, err
	}
	tw := newTarWriter(w)
	tw.entries, tw.mirror = w, a
	return a.finish(writeDir(tw, src, wopts))
}

func writeDir(tw *tarWriter, dir string, opts WriteOptions) error {
	dir = filepath.Clean(dir)
	err := filepath.WalkDir(dir, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if full == dir {
			return nil
		}
		name := filepath.ToSlash(full[len(dir)+1:])
		if isAUFSMeta(name) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			return os.NewSyscallError("lstat "+full, err)
		}
		if opts.Whiteouts == WhiteoutOverlay {
			return tw.writeOverlay(full, name, &st)
		}
		return tw.writeFile(full, name, &st)
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return fmt.Errorf("write tar of %s: %w", dir, err)
	}
	return nil
}

// writeOverlay writes the file at full of an overlay upper directory,
// turning its whiteout devices and opaque directories into .wh. entries.
func (tw *tarWriter) writeOverlay(full, name string, st *unix.Stat_t) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		if st.Rdev == 0 {
			dir, base := path.Split(name)
			return tw.writeMarker(dir+whiteoutPrefix+base, st)
		}
	case unix.S_IFDIR:
		if err := tw.writeFile(full, name, st); err != nil {
			return err
		}
		opaque, err := getXattr(full, overlayOpaqueXattr)
		if err != nil && !isNoXattr(err) {
			return err
		}
		if string(opaque) == "y" {
			return tw.writeMarker(name+"/"+opaqueMarker, st)
		}
		return nil
	}
	return tw.writeFile(full, name, st)
}

func isNoXattr(err error) bool {
	return errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP)
}

// WriteChanges writes a layer tar of changes to w, reading content from dir:
// the added and modified paths (a directory without its content), a
// .wh.<name> whiteout for each deleted one, and every parent directory on
// the way, so that the tar extracts with the right parent modes.
func WriteChanges(w io.Writer, dir string, changes []Change) error {
	sorted := slices.Clone(changes)
	slices.SortFunc(sorted, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	tw := newTarWriter(w)
	written := make(map[string]bool)
	write := func(p string) error {
		if written[p] {
			return nil
		}
		written[p] = true
		var st unix.Stat_t
		if err := unix.Lstat(dir+p, &st); err != nil {
			return os.NewSyscallError("lstat "+p, err)
		}
		return tw.writeFile(dir+p, p[1:], &st)
	}
	for _, c := range sorted {
		p := path.Clean("/" + c.Path)
		if p == "/" {
			continue
		}
		parent, base := path.Split(p)
		for i := 1; i < len(parent); i++ {
			if parent[i] == '/' {
				if err := write(parent[:i]); err != nil {
					return fmt.Errorf("write changes: %w", err)
				}
			}
		}
		var err error
		if c.Kind == ChangeDelete {
			var st unix.Stat_t
			if err = unix.Lstat(dir+parent, &st); err == nil {
				err = tw.writeMarker(parent[1:]+whiteoutPrefix+base, &st)
			}
		} else {
			err = write(p)
		}
		if err != nil {
			return fmt.Errorf("write changes: %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write changes: %w", err)
	}
	return nil
}

// tarWriter writes files as layer tar entries.
type tarWriter struct {
	*tar.Writer
	buf []byte
	// links maps each inode with several names to the first name written.
	links map[fileID]string
	// CopyDir's: told of each entry, and extracting each entry.
	entries EntryWriter
	mirror  *applier
}

// writeHeader writes hdr and tells the entry writer, if any.
func (tw *tarWriter) writeHeader(hdr *tar.Header) error {
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if tw.entries == nil {
		return nil
	}
	return tw.entries.Entry(hdr.Name, hdr.Size)
}

func newTarWriter(w io.Writer) *tarWriter {
	return &tarWriter{Writer: tar.NewWriter(w), buf: make([]byte, copyBufferSize), links: make(map[fileID]string)}
}

// writeFile writes the file at full as the entry name. Sockets, which a tar
// cannot hold, are left out.
func (tw *tarWriter) writeFile(full, name string, st *unix.Stat_t) error {
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		Format:  tar.FormatPAX,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size
		if st.Nlink > 1 {
			id := fileID{st.Dev, st.Ino}
			if first, ok := tw.links[id]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				tw.links[id] = name
			}
		}
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case unix.S_IFLNK:
		target, err := os.Readlink(full)
		if err != nil {
			return err
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default:
		return nil
	}
	xattrs, err := imageXattrs(full)
	if err != nil {
		return err
	}
	if len(xattrs) > 0 {
		hdr.PAXRecords = make(map[string]string, len(xattrs))
		for name, value := range xattrs {
			hdr.PAXRecords[paxXattr+name] = value
		}
	}
	if err := tw.writeHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
		return tw.mirrorEntry(hdr)
	}
	fd, err := unix.Open(full, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("open "+full, err)
	}
	defer unix.Close(fd)
	content := io.LimitReader(fdReader(fd), hdr.Size)
	var n int64
	if tw.mirror == nil {
		n, err = io.CopyBuffer(tw, content, tw.buf)
	} else {
		// The applier reads the content, and each read goes to the tar too.
		counted := &countingReader{r: io.TeeReader(content, tw.Writer)}
		err = tw.mirror.entry(hdr, counted)
		n = counted.n
	}
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("%s shrank while it was written", full)
	}
	return err
}

// mirrorEntry extracts an entry without content, when there is a mirror.
func (tw *tarWriter) mirrorEntry(hdr *tar.Header) error {
	if tw.mirror == nil {
		return nil
	}
	return tw.mirror.entry(hdr, eof{})
}

// eof is the content of an entry that has none.
type eof struct{}

func (eof) Read([]byte) (int, error) { return 0, io.EOF }

// writeMarker writes an empty whiteout file named name, with the owner and
// time of st.
func (tw *tarWriter) writeMarker(name string, st *unix.Stat_t) error {
	hdr := &tar.Header{
		Name:     name,
		Typeflag: tar.TypeReg,
		Mode:     0o600, // as Docker writes whiteouts
		Uid:      int(st.Uid),
		Gid:      int(st.Gid),
		ModTime:  time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		Format:   tar.FormatPAX,
	}
	if err := tw.writeHeader(hdr); err != nil {
		return err
	}
	return tw.mirrorEntry(hdr)
}
