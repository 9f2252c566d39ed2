package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/strata-storage/strata/container"
	"github.com/strata-storage/strata/store"
)

// containerCommands are `container` and those of its subcommands that also
// exist at the top level: create, ps, rm, mount, umount.
func containerCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{
		newContainerCommand(g), newCreateCommand(g), newPsCommand(g),
		newContainerRmCommand(g), newMountCommand(g), newUmountCommand(g),
	}
}

// newContainerCommand is `container`, with Docker's subcommand names.
func newContainerCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "container", Short: "Manage containers"}
	ls := newPsCommand(g)
	ls.Use, ls.Aliases = "ls [OPTIONS]", []string{"ps", "list"}
	cmd.AddCommand(newContainerInspectCommand(g), ls,
		newCreateCommand(g), newContainerRmCommand(g), newMountCommand(g), newUmountCommand(g))
	return cmd
}

func newCreateCommand(g *globals) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "create [--name NAME] IMAGE",
		Short: "Create a container: its init and read-write layers",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				c, err := s.CreateContainer(args[0], container.CreateOptions{Name: name})
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), c.ID)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "assign a name to the container")
	return cmd
}

func newPsCommand(g *globals) *cobra.Command {
	var all, quiet, size, noTrunc bool
	cmd := &cobra.Command{
		Use:   "ps [OPTIONS]",
		Short: "List containers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				return printContainers(cmd.OutOrStdout(), s, all, quiet, size, noTrunc)
			})
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&all, "all", "a", false, "show all containers (only running ones by default, and none runs here)")
	f.BoolVarP(&quiet, "quiet", "q", false, "only display container IDs")
	f.BoolVar(&size, "size", false, "display total file sizes")
	f.BoolVar(&noTrunc, "no-trunc", false, "don't truncate output")
	return cmd
}

// printContainers prints ps's table. strata runs nothing, so every
// container is "Created" and, as in Docker, listed only with -a.
func printContainers(w io.Writer, s *store.Store, all, quiet, size, noTrunc bool) error {
	var cs []container.Container
	if all {
		var err error
		if cs, err = s.Containers().List(); err != nil {
			return err
		}
	}
	if quiet {
		for _, c := range cs {
			fmt.Fprintln(w, trunc(c.ID, noTrunc))
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	header := "CONTAINER ID\tIMAGE\tCOMMAND\tCREATED\tSTATUS\tPORTS\tNAMES"
	if size {
		header += "\tSIZE"
	}
	fmt.Fprintln(tw, header)
	for _, c := range cs {
		path, args := store.Command(c)
		command := strings.TrimSpace(strings.Join(append([]string{path}, args...), " "))
		if !noTrunc {
			command = ellipsis(command, 20)
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\tCreated\t\t%s", trunc(c.ID, noTrunc), imageColumn(s, c, noTrunc),
			strconv.Quote(command), humanAge(c.Created), c.Name)
		if size {
			rw, rootfs, err := s.ContainerSize(c)
			if err != nil {
				return err
			}
			line += fmt.Sprintf("\t%s (virtual %s)", humanSize(rw), humanSize(rootfs))
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}

// imageColumn is the reference c was created from while it still names
// c's image, else the image ID, as Docker shows it.
func imageColumn(s *store.Store, c container.Container, noTrunc bool) string {
	if img, err := s.Images().Resolve(c.ImageRef); err == nil && img.ID == c.Image {
		return c.ImageRef
	}
	if noTrunc {
		return c.Image.String()
	}
	return shortID(c.Image)
}

func trunc(id string, noTrunc bool) string {
	if noTrunc || len(id) <= 12 {
		return id
	}
	return id[:12]
}

// ellipsis shortens s to n characters, the last one "…", as Docker does.
func ellipsis(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func newContainerInspectCommand(g *globals) *cobra.Command {
	var size bool
	cmd := &cobra.Command{
		Use:   "inspect [-s] CONTAINER...",
		Short: "Show details of containers as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				out := []store.ContainerInspect{}
				for _, ref := range args {
					c, err := s.Containers().Get(ref)
					if err != nil {
						return err
					}
					in, err := s.InspectContainer(c, size)
					if err != nil {
						return err
					}
					out = append(out, in)
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "    ")
				return enc.Encode(out)
			})
		},
	}
	cmd.Flags().BoolVar(&size, "size", false, "display total file sizes")
	return cmd
}

func newContainerRmCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] CONTAINER...",
		Short: "Remove containers and their layers",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				return eachContainer(s, args, func(c container.Container, ref string) error {
					if err := s.RemoveContainer(c, force); err != nil {
						return err
					}
					fmt.Fprintln(cmd.OutOrStdout(), ref)
					return nil
				})
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove a mounted container, unmounting it")
	return cmd
}

func newMountCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "mount CONTAINER",
		Short: "Mount a container's root file system and print its path",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withContainer(args[0], func(s *store.Store, c container.Container) error {
				dir, err := s.Containers().Mount(c)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), dir)
				return nil
			})
		},
	}
}

func newUmountCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "umount CONTAINER...",
		Aliases: []string{"unmount"},
		Short:   "Release a mount of containers' root file systems",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				return eachContainer(s, args, func(c container.Container, _ string) error {
					return s.Containers().Unmount(c)
				})
			})
		},
	}
}

// eachContainer runs fn on the container each ref names, going on after a
// failure; the error lists every failure, one line each.
func eachContainer(s *store.Store, refs []string, fn func(c container.Container, ref string) error) error {
	var errs []error
	for _, ref := range refs {
		c, err := s.Containers().Get(ref)
		if err == nil {
			err = fn(c, ref)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...) // errdefs.Message prints a line each
}

// withContainer runs fn on the open store and the container ref names.
func (g *globals) withContainer(ref string, fn func(*store.Store, container.Container) error) error {
	return g.withStore(func(s *store.Store) error {
		c, err := s.Containers().Get(ref)
		if err != nil {
			return err
		}
		return fn(s, c)
	})
}
