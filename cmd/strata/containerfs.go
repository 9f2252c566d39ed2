package main

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/store"
)

// fsCommands are the commands on a container's file system: diff, commit,
// export and cp.
func fsCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{newDiffCommand(g), newCommitCommand(g), newExportCommand(g), newCpCommand(g)}
}

func newDiffCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "diff CONTAINER",
		Short: "List the files a container added (A), changed (C) or deleted (D)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withContainer(args[0], func(s *store.Store, c container.Container) error {
				changes, err := s.Containers().Changes(c)
				if err != nil {
					return err
				}
				for _, ch := range changes {
					fmt.Fprintln(cmd.OutOrStdout(), ch.Kind, ch.Path)
				}
				return nil
			})
		},
	}
}

func newCommitCommand(g *globals) *cobra.Command {
	var opts store.CommitOptions
	cmd := &cobra.Command{
		Use:   "commit [-m MSG] [-a AUTHOR] [-c CHANGE]... CONTAINER [REPOSITORY[:TAG]]",
		Short: "Create an image from a container's changes",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := interruptible()
			defer cancel()
			if len(args) == 2 {
				opts.Ref = args[1]
			}
			return g.withStore(func(s *store.Store) error {
				img, err := s.Commit(ctx, args[0], opts)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), img.ID)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&opts.Message, "message", "m", "", "commit message")
	cmd.Flags().StringVarP(&opts.Author, "author", "a", "", `author (e.g. "Jane Doe <jane@example.com>")`)
	cmd.Flags().StringArrayVarP(&opts.Changes, "change", "c", nil,
		"apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR)")
	return cmd
}

func newExportCommand(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "export [-o FILE] CONTAINER",
		Short: "Write a container's root file system as a tar (stdout by default)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" && term.IsTerminal(int(os.Stdout.Fd())) {
				return fmt.Errorf("%w: cowardly refusing to export to a terminal; use -o FILE or redirect", errdefs.ErrInvalid)
			}
			return g.withContainer(args[0], func(s *store.Store, c container.Container) error {
				export := func(w io.Writer) error {
					// Tar headers come 512 bytes at a time: write in big chunks.
					bw := bufio.NewWriterSize(w, 1<<20)
					if err := s.Containers().Export(c, bw); err != nil {
						return err
					}
					return bw.Flush()
				}
				if output == "" {
					return export(os.Stdout)
				}
				return writeAtomic(output, export)
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to a file instead of stdout")
	return cmd
}
