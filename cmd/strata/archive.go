package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/imagearchive"
	"github.com/strata-storage/strata/store"
)

// interruptible returns a context cancelled by SIGINT or SIGTERM, so that an
// interrupted load leaves nothing half-made.
func interruptible() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func newLoadCommand(g *globals) *cobra.Command {
	var input string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "load [-i FILE|DIR]",
		Short: "Load images from a docker save archive, a v1 archive or an OCI layout (stdin by default)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := interruptible()
			defer cancel()
			var r io.Reader = os.Stdin
			if input != "" {
				f, err := os.Open(input)
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			} else if term.IsTerminal(int(os.Stdin.Fd())) {
				return fmt.Errorf("%w: requested load from stdin, but stdin is a terminal; use -i FILE or a pipe", errdefs.ErrInvalid)
			}
			return g.withStore(func(s *store.Store) error {
				bars := newBars(quiet)
				loaded, err := imagearchive.Load(ctx, s, r, imagearchive.LoadOptions{Progress: bars.progress()})
				bars.wait()
				if err != nil {
					return err
				}
				for _, l := range loaded {
					if len(l.RepoTags) == 0 {
						fmt.Fprintln(cmd.OutOrStdout(), "Loaded image ID:", l.ID)
					}
					for _, t := range l.RepoTags {
						fmt.Fprintln(cmd.OutOrStdout(), "Loaded image:", t)
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&input, "input", "i", "", "read from an archive file or OCI layout directory instead of stdin")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "suppress the progress output")
	return cmd
}

func newSaveCommand(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "save [-o FILE] IMAGE...",
		Short: "Save images to a tar archive (docker save format with an OCI layout; stdout by default)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := interruptible()
			defer cancel()
			if output == "" && term.IsTerminal(int(os.Stdout.Fd())) {
				return fmt.Errorf("%w: cowardly refusing to save to a terminal; use -o FILE or redirect", errdefs.ErrInvalid)
			}
			return g.withStore(func(s *store.Store) error {
				if output == "" {
					return imagearchive.Save(ctx, s, os.Stdout, args, imagearchive.SaveOptions{})
				}
				return writeAtomic(output, func(w io.Writer) error {
					bars := newBars(false)
					err := imagearchive.Save(ctx, s, w, args, imagearchive.SaveOptions{Progress: bars.progress()})
					bars.wait()
					return err
				})
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to a file instead of stdout")
	return cmd
}

// writeAtomic writes path through a temporary file beside it, synced and
// renamed into place only when write succeeds: an interrupted save never
// leaves a truncated archive under the requested name.
func writeAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func newImportCommand(g *globals) *cobra.Command {
	var message string
	var changes []string
	cmd := &cobra.Command{
		Use:   "import [-m MSG] [-c CHANGE] FILE|- [REPOSITORY[:TAG]]",
		Short: "Import a root file system tar as a one-layer image",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := interruptible()
			defer cancel()
			var r io.Reader = os.Stdin
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			opts := imagearchive.ImportOptions{Message: message, Changes: changes}
			if len(args) == 2 {
				opts.Ref = args[1]
			}
			return g.withStore(func(s *store.Store) error {
				img, err := imagearchive.Import(ctx, s, r, opts)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), img.ID)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&message, "message", "m", "", "commit message for the imported image")
	cmd.Flags().StringArrayVarP(&changes, "change", "c", nil, "apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR)")
	return cmd
}
