package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/strata-storage/strata/archive"
	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/store"
)

// cp follows docker cp: the container side is served by the container
// store as the Engine API's /archive endpoints would (a tar of a path, a
// tar extracted into a directory); the rules that pick the directory to
// extract into and the name the copy takes there are the client's, here.

func newCpCommand(g *globals) *cobra.Command {
	var follow, copyUIDGID bool
	cmd := &cobra.Command{
		Use:   "cp [-a] [-L] CONTAINER:SRC_PATH DEST_PATH|-\n  strata cp [-a] [-L] SRC_PATH|- CONTAINER:DEST_PATH",
		Short: "Copy files between a container and the local file system",
		Long: `Copy files between a container and the local file system, as docker cp does.
"-" as the destination writes a tar to stdout; as the source, reads one from stdin.
A source ending in "/." copies the directory's content. Container paths are
resolved inside the container's root: its symlinks and ".." never lead out of it.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst := splitCpArg(args[0]), splitCpArg(args[1])
			switch {
			case src.container != "" && dst.container != "":
				return fmt.Errorf("copying between containers is not supported: %w", errdefs.ErrNotSupported)
			case src.container == "" && dst.container == "":
				return fmt.Errorf("must specify at least one container source: %w", errdefs.ErrInvalid)
			case src.path == "" || dst.path == "":
				return fmt.Errorf("filesystem path cannot be empty: %w", errdefs.ErrInvalid)
			}
			return g.withStore(func(s *store.Store) error {
				c, err := s.Containers().Get(src.container + dst.container)
				if err != nil {
					return err
				}
				if src.container != "" {
					return copyOut(cmd.OutOrStdout(), s.Containers(), c, src.path, dst.path, follow)
				}
				return copyIn(s.Containers(), c, src.path, dst.path, follow, container.CopyToOptions{CopyUIDGID: copyUIDGID, AsUser: copyUIDGID})
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow-link", "L", false, "always follow a symlink in SRC_PATH")
	cmd.Flags().BoolVarP(&copyUIDGID, "archive", "a", false, "archive mode (copy all uid/gid information)")
	return cmd
}

// cpArg is one side of cp: a path in a container, or a local one.
type cpArg struct {
	container string // "" for a local path
	path      string
}

// splitCpArg splits CONTAINER:PATH; an absolute path or one starting
// with "." is local even with a colon in it, as docker cp has it.
func splitCpArg(arg string) cpArg {
	if filepath.IsAbs(arg) || strings.HasPrefix(arg, ".") {
		return cpArg{path: arg}
	}
	name, p, ok := strings.Cut(arg, ":")
	if !ok {
		return cpArg{path: arg}
	}
	return cpArg{container: name, path: p}
}

// copyOut copies srcPath of c to the local dstPath, or as a tar to stdout
// when dstPath is "-".
func copyOut(stdout io.Writer, cs *container.Store, c container.Container, srcPath, dstPath string, follow bool) error {
	name := "" // the name the copy takes when not its own: a followed link's
	if follow {
		st, err := cs.Stat(c, srcPath)
		if err != nil {
			return err
		}
		if st.Mode&os.ModeSymlink != 0 {
			name, srcPath = st.Name, st.LinkTarget
		}
	}
	rc, st, err := cs.CopyFrom(c, srcPath)
	if err != nil {
		return err
	}
	defer rc.Close()
	top := st.Name // the tar's top entry; none for a directory's content
	if top == "." || top == "/" {
		top = ""
	}
	if name == "" {
		name = top
	}
	if dstPath == "-" {
		_, err := io.Copy(stdout, rebased(rc, top, name))
		return err
	}
	fi, err := os.Stat(dstPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	dir, to, err := cpDestination(dstPath, err == nil, err == nil && fi.IsDir(), st.Mode.IsDir(), name)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("no such directory: %s: %w", dir, errdefs.ErrNotFound)
	}
	_, err = archive.Apply(dir, rebased(rc, top, to), archive.ApplyOptions{Whiteouts: archive.WhiteoutAUFS})
	return err
}

func rebased(r io.Reader, from, to string) io.Reader {
	if from == to {
		return r
	}
	return container.Rebase(r, from, to)
}

// copyIn copies the local srcPath, or a tar on stdin when it is "-", to
// dstPath of c.
func copyIn(cs *container.Store, c container.Container, srcPath, dstPath string, follow bool, opts container.CopyToOptions) error {
	dstStat, err := cs.Stat(c, dstPath)
	if err == nil && dstStat.Mode&os.ModeSymlink != 0 {
		// Copy to what the link leads to, inside the container.
		dstPath = dstStat.LinkTarget
		dstStat, err = cs.Stat(c, dstPath)
	}
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	exists := err == nil
	if exists && !dstStat.Mode.IsDir() && !dstStat.Mode.IsRegular() {
		return fmt.Errorf("destination %q must be a directory or a regular file: %w", c.Name+":"+dstPath, errdefs.ErrInvalid)
	}
	if srcPath == "-" {
		if !exists || !dstStat.Mode.IsDir() {
			return fmt.Errorf("destination %q must be a directory: %w", c.Name+":"+dstPath, errdefs.ErrInvalid)
		}
		return cs.CopyTo(c, dstPath, os.Stdin, opts)
	}

	stat, host := os.Lstat, srcPath
	if follow {
		stat = os.Stat
		if host, err = filepath.EvalSymlinks(srcPath); err != nil {
			return err
		}
	}
	fi, err := stat(srcPath)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("could not find the file %s: %w", srcPath, errdefs.ErrNotFound)
	}
	if err != nil {
		return err
	}
	if strings.HasSuffix(srcPath, "/") && !fi.IsDir() {
		return fmt.Errorf("%s: not a directory: %w", srcPath, errdefs.ErrInvalid)
	}
	name := filepath.Base(srcPath)
	if srcPath == "." || strings.HasSuffix(srcPath, "/.") {
		name = "" // the directory's content
	}
	dir, to, err := cpDestination(dstPath, exists, exists && dstStat.Mode.IsDir(), fi.IsDir(), name)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(container.WriteTar(pw, host, to)) }()
	err = cs.CopyTo(c, dir, pr, opts)
	pr.Close() // stops the writer should the copy end early
	return err
}

// cpDestination applies docker cp's rules to a copy of a source named name
// ("" for a directory's content) to dstPath: it returns the directory to
// extract into and the name the copy takes there.
func cpDestination(dstPath string, exists, dstIsDir, srcIsDir bool, name string) (dir, to string, err error) {
	switch {
	case exists && dstIsDir:
		return dstPath, name, nil // into it
	case exists && srcIsDir:
		return "", "", fmt.Errorf("cannot copy a directory to a file: %s: %w", dstPath, errdefs.ErrInvalid)
	case !exists && !srcIsDir && (strings.HasSuffix(dstPath, "/") || strings.HasSuffix(dstPath, "/.")):
		return "", "", fmt.Errorf("no such directory: %s: %w", dstPath, errdefs.ErrNotFound)
	}
	clean := filepath.Clean(dstPath)
	return filepath.Dir(clean), filepath.Base(clean), nil // as that name
}
