package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/layer"
	"github.com/strata-storage/strata/store"
)

func newImagesCommand(g *globals) *cobra.Command {
	var all, quiet, digests, noTrunc, tree bool
	cmd := &cobra.Command{
		Use:   "images [REPOSITORY[:TAG]]",
		Short: "List images",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				if tree {
					return printTree(cmd.OutOrStdout(), s)
				}
				return printImages(cmd.OutOrStdout(), s, args, all, quiet, digests, noTrunc)
			})
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&all, "all", "a", false, "show all images (intermediate images are hidden by default)")
	f.BoolVarP(&quiet, "quiet", "q", false, "only show image IDs")
	f.BoolVar(&digests, "digests", false, "show digests")
	f.BoolVar(&noTrunc, "no-trunc", false, "don't truncate output")
	f.BoolVar(&tree, "tree", false, "show the layer tree with virtual sizes")
	return cmd
}

func printImages(w io.Writer, s *store.Store, filter []string, all, quiet, digests, noTrunc bool) error {
	imgs, err := s.Images().List()
	if err != nil {
		return err
	}
	hasChildren := map[digest.Digest]bool{}
	for _, img := range imgs {
		if img.Parent != "" {
			hasChildren[img.Parent] = true
		}
	}
	sort.Slice(imgs, func(i, j int) bool { return created(imgs[i]).After(created(imgs[j])) })
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	if !quiet {
		cols := "REPOSITORY\tTAG\t"
		if digests {
			cols += "DIGEST\t"
		}
		fmt.Fprintln(tw, cols+"IMAGE ID\tCREATED\tSIZE")
	}
	seen := map[digest.Digest]bool{}
	for _, img := range imgs {
		if !all && len(img.RepoTags) == 0 && hasChildren[img.ID] {
			continue
		}
		id := shortID(img.ID)
		if noTrunc {
			id = img.ID.String()
		}
		rows := img.RepoTags
		if len(filter) > 0 {
			rows = matching(rows, filter[0])
			if len(rows) == 0 {
				continue
			}
		}
		if quiet {
			if !seen[img.ID] {
				fmt.Fprintln(w, id)
				seen[img.ID] = true
			}
			continue
		}
		size, err := s.ImageSize(img)
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			rows = []string{"<none>:<none>"}
		}
		for _, ref := range rows {
			repo, tag := splitRepoTag(ref)
			if ref == "<none>:<none>" {
				repo, tag = "<none>", "<none>"
			}
			line := repo + "\t" + tag + "\t"
			if digests {
				line += repoDigest(img, repo) + "\t"
			}
			fmt.Fprintf(tw, "%s%s\t%s\t%s\n", line, id, humanAge(created(img)), humanSize(size))
		}
	}
	return tw.Flush()
}

// matching keeps the references whose repository (or repository:tag) is ref.
func matching(refs []string, ref string) []string {
	var out []string
	for _, r := range refs {
		repo, tag := splitRepoTag(r)
		if fr := familiar(ref); fr == repo || fr == repo+":"+tag || ref == repo {
			out = append(out, r)
		}
	}
	return out
}

func repoDigest(img image.Image, repo string) string {
	for _, d := range img.RepoDigests {
		if r, dg, ok := strings.Cut(familiar(d), "@"); ok && r == repo {
			return dg
		}
	}
	return "<none>"
}

// created is when img was built, or loaded when its config does not say.
func created(img image.Image) time.Time {
	if img.Spec.Created != nil {
		return *img.Spec.Created
	}
	return img.Loaded
}

// printTree prints the layer tree as the seed's `docker images -tree` did:
// one line per layer with its virtual size, tags on the images' top layers.
func printTree(w io.Writer, s *store.Store) error {
	layers, err := s.Layers().List()
	if err != nil {
		return err
	}
	imgs, err := s.Images().List()
	if err != nil {
		return err
	}
	children := map[digest.Digest][]layer.Layer{}
	for _, l := range layers {
		children[l.Parent] = append(children[l.Parent], l)
	}
	tags := map[digest.Digest][]string{}
	for _, img := range imgs {
		top := layer.ChainID(img.DiffIDs())
		if len(img.RepoTags) == 0 {
			tags[top] = append(tags[top], "<none> (image "+shortID(img.ID)+")")
		}
		for _, t := range img.RepoTags {
			tags[top] = append(tags[top], familiar(t))
		}
	}
	var walk func(parent digest.Digest, prefix string, size int64)
	walk = func(parent digest.Digest, prefix string, size int64) {
		kids := children[parent]
		sort.Slice(kids, func(i, j int) bool { return kids[i].ChainID < kids[j].ChainID })
		for i, l := range kids {
			branch, next := "├─", "│ "
			if i == len(kids)-1 {
				branch, next = "└─", "  "
			}
			line := fmt.Sprintf("%s%s%s Virtual Size: %s", prefix, branch, shortID(l.ChainID), humanSize(size+l.Size))
			if t := tags[l.ChainID]; len(t) > 0 {
				sort.Strings(t)
				line += " Tags: " + strings.Join(t, ", ")
			}
			fmt.Fprintln(w, line)
			walk(l.ChainID, prefix+next, size+l.Size)
		}
	}
	walk("", "", 0)
	return nil
}

func newImageCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage images"}
	inspect := &cobra.Command{
		Use:   "inspect IMAGE...",
		Short: "Show details of images as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				out := []store.ImageInspect{}
				for _, ref := range args {
					img, err := s.Images().Resolve(ref)
					if err != nil {
						return err
					}
					in, err := s.InspectImage(img)
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
	cmd.AddCommand(inspect)
	for _, c := range []*cobra.Command{newLoadCommand(g), newSaveCommand(g), newImportCommand(g),
		newHistoryCommand(g), newTagCommand(g), newRmCommand(g), newLsCommand(g)} {
		cmd.AddCommand(c)
	}
	return cmd
}

// newLsCommand is `image ls`, the same as `images`.
func newLsCommand(g *globals) *cobra.Command {
	c := newImagesCommand(g)
	c.Use = "ls [REPOSITORY[:TAG]]"
	return c
}

// newRmCommand is `image rm`, the same as `rmi`.
func newRmCommand(g *globals) *cobra.Command {
	c := newRmiCommand(g)
	c.Use = "rm [-f] IMAGE..."
	return c
}

func newHistoryCommand(g *globals) *cobra.Command {
	var noTrunc, quiet bool
	cmd := &cobra.Command{
		Use:   "history IMAGE",
		Short: "Show the history of an image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				img, err := s.Images().Resolve(args[0])
				if err != nil {
					return err
				}
				hist, err := s.History(img)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
				if !quiet {
					fmt.Fprintln(tw, "IMAGE\tCREATED\tCREATED BY\tSIZE\tCOMMENT")
				}
				for _, h := range hist {
					id := h.ID
					if id != "<missing>" && !noTrunc {
						id = shortID(digest.Digest(id))
					}
					if quiet {
						fmt.Fprintln(w, id)
						continue
					}
					by := strings.ReplaceAll(h.CreatedBy, "\t", " ")
					if !noTrunc && len(by) > 45 {
						by = by[:44] + "…"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", id, humanAge(h.Created), by, humanSize(h.Size), h.Comment)
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&noTrunc, "no-trunc", false, "don't truncate output")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "only show image IDs")
	return cmd
}

func newTagCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "tag SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]",
		Short: "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				img, err := s.Images().Resolve(args[0])
				if err != nil {
					return err
				}
				return s.Images().Tag(img.ID, args[1])
			})
		},
	}
}

func newRmiCommand(g *globals) *cobra.Command {
	var opts store.RemoveImageOptions
	cmd := &cobra.Command{
		Use:   "rmi [-f] [--no-prune] IMAGE...",
		Short: "Remove images",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				var errs []error
				for _, ref := range args {
					removed, err := s.RemoveImage(ref, opts)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					for _, r := range removed {
						if r.Untagged != "" {
							fmt.Fprintln(cmd.OutOrStdout(), "Untagged:", familiar(r.Untagged))
						} else {
							fmt.Fprintln(cmd.OutOrStdout(), "Deleted:", r.Deleted)
						}
					}
				}
				return errors.Join(errs...)
			})
		},
	}
	cmd.Flags().BoolVarP(&opts.Force, "force", "f", false, "force removal of the image")
	cmd.Flags().BoolVar(&opts.NoPrune, "no-prune", false, "do not delete untagged parents")
	return cmd
}

func newInfoCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "Show the store's driver, its status and root",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(func(s *store.Store) error {
				imgs, err := s.Images().List()
				if err != nil {
					return err
				}
				layers, err := s.Layers().List()
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "Images: %d\nLayers: %d\nStorage Driver: %s\n", len(imgs), len(layers), s.Driver())
				for _, kv := range s.Driver().Status() {
					fmt.Fprintf(w, " %s: %s\n", kv[0], kv[1])
				}
				fmt.Fprintf(w, "Root Dir: %s\n", s.Root())
				return nil
			})
		},
	}
}
