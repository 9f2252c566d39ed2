package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/thinp"
	"github.com/strata-storage/strata/thinp/server"
)

// newThinCommand is the seed's dmsetup walkthrough on strata's own thin
// pool: dmsetup's "message" verbs and create/remove of thin targets.
func newThinCommand(g *globals) *cobra.Command {
	var dir string
	client := func() *server.Client {
		if dir == "" {
			dir = filepath.Join(g.root, "thinpool")
		}
		return &server.Client{Dir: dir}
	}
	cmd := &cobra.Command{
		Use:   "thin",
		Short: "Thin-provisioning pool and its devices (dm-thin compatible, served from user space)",
	}
	cmd.PersistentFlags().StringVar(&dir, "pool", "", "pool directory (default <root>/thinpool)")
	create := &cobra.Command{
		Use:   "create ID [--size SIZE]",
		Short: "Create a thin device (create_thin)",
		Args:  cobra.ExactArgs(1),
	}
	size := create.Flags().String("size", "1G", "virtual size (the walkthrough's 2097152 sectors)")
	create.RunE = func(_ *cobra.Command, args []string) error {
		ids, err := deviceIDs(args)
		if err != nil {
			return err
		}
		n, err := parseBytes(*size)
		if err != nil {
			return err
		}
		return client().CreateThin(ids[0], n)
	}
	cmd.AddCommand(newThinPoolCommand(client), create,
		&cobra.Command{
			Use:   "snap ID ORIGIN",
			Short: "Snapshot device ORIGIN as ID (create_snap), freezing its file system if mounted",
			Args:  cobra.ExactArgs(2),
			RunE: func(_ *cobra.Command, args []string) error {
				ids, err := deviceIDs(args)
				if err != nil {
					return err
				}
				return client().CreateSnap(ids[0], ids[1])
			},
		},
		&cobra.Command{
			Use:   "delete ID",
			Short: "Delete a thin device and free its blocks",
			Args:  cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				ids, err := deviceIDs(args)
				if err != nil {
					return err
				}
				return client().Delete(ids[0])
			},
		},
		&cobra.Command{
			Use:   "activate ID",
			Short: "Make a thin device a block device and print its path",
			Args:  cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				ids, err := deviceIDs(args)
				if err != nil {
					return err
				}
				path, err := client().Activate(ids[0])
				if err == nil {
					fmt.Fprintln(c.OutOrStdout(), path)
				}
				return err
			},
		},
		&cobra.Command{
			Use:   "deactivate ID",
			Short: "Detach a thin device's block device (refused while mounted)",
			Args:  cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				ids, err := deviceIDs(args)
				if err != nil {
					return err
				}
				return client().Deactivate(ids[0])
			},
		},
		&cobra.Command{
			Use:   "ls",
			Short: "List thin devices",
			Args:  cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error {
				st, err := client().Status()
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 8, 3, ' ', 0)
				fmt.Fprintln(tw, "ID\tSIZE\tMAPPED\tEXCLUSIVE\tSHARED\tDEVICE")
				for _, d := range st.Devices {
					bs := uint64(st.BlockSize)
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", d.ID, humanSize(d.Size),
						humanSize(int64(d.MappedBlocks*bs)), humanSize(int64(d.Exclusive*bs)),
						humanSize(int64(d.Shared*bs)), st.Active[d.ID])
				}
				return tw.Flush()
			},
		})
	return cmd
}

func newThinPoolCommand(client func() *server.Client) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Create, inspect, grow, check or stop the thin pool"}

	create := &cobra.Command{
		Use:   "create",
		Short: "Create a pool: sparse data and metadata files",
		Args:  cobra.NoArgs,
	}
	dataSize := create.Flags().String("data-size", "100G", "data file size")
	metaSize := create.Flags().String("metadata-size", "2G", "metadata file size")
	blockSize := create.Flags().String("block-size", "64K", "data block size (64K..1M)")
	create.RunE = func(*cobra.Command, []string) error {
		var opts thinp.Options
		for _, f := range []struct {
			s   string
			dst *int64
		}{{*dataSize, &opts.DataSize}, {*metaSize, &opts.MetadataSize}, {*blockSize, &opts.BlockSize}} {
			n, err := parseBytes(f.s)
			if err != nil {
				return err
			}
			*f.dst = n
		}
		return server.CreatePool(client().Dir, opts)
	}

	grow := &cobra.Command{
		Use:   "grow [--data-size SIZE] [--metadata-size SIZE]",
		Short: "Extend the data or metadata file, online",
		Args:  cobra.NoArgs,
	}
	growData := grow.Flags().String("data-size", "", "new data file size")
	growMeta := grow.Flags().String("metadata-size", "", "new metadata file size")
	grow.RunE = func(*cobra.Command, []string) error {
		var data, meta int64
		var err error
		if *growData == "" && *growMeta == "" {
			return fmt.Errorf("%w: give --data-size or --metadata-size", errdefs.ErrInvalid)
		}
		if *growData != "" {
			if data, err = parseBytes(*growData); err != nil {
				return err
			}
		}
		if *growMeta != "" {
			if meta, err = parseBytes(*growMeta); err != nil {
				return err
			}
		}
		return client().Grow(data, meta)
	}

	cmd.AddCommand(create, grow,
		&cobra.Command{
			Use:   "status",
			Short: "Show the pool's status line, as dmsetup status shows a thin-pool",
			Args:  cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error {
				st, err := client().Status()
				if err != nil {
					return err
				}
				printPoolStatus(c, client().Dir, st)
				return nil
			},
		},
		&cobra.Command{
			Use:   "check",
			Short: "Run thin_check on the last committed metadata",
			Args:  cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error {
				out, err := client().Check()
				fmt.Fprint(c.OutOrStdout(), out)
				return err
			},
		},
		&cobra.Command{
			Use:   "stop",
			Short: "Deactivate every device and stop the pool's server",
			Args:  cobra.NoArgs,
			RunE:  func(*cobra.Command, []string) error { return client().Stop() },
		})
	return cmd
}

func printPoolStatus(c *cobra.Command, dir string, st server.Status) {
	w := c.OutOrStdout()
	bs := st.BlockSize
	state := "rw"
	switch {
	case st.NeedsCheck:
		state = "needs_check"
	case st.OutOfMeta:
		state = "out_of_metadata_space"
	case st.OutOfData:
		state = "out_of_data_space"
	}
	fmt.Fprintf(w, "Pool:               %s\n", dir)
	fmt.Fprintf(w, "Transaction:        %d\n", st.TransactionID)
	fmt.Fprintf(w, "Block size:         %s\n", humanSize(bs))
	fmt.Fprintf(w, "Data space:         %s used of %s (%d/%d blocks)\n",
		humanSize(int64(st.UsedData)*bs), humanSize(int64(st.TotalData)*bs), st.UsedData, st.TotalData)
	fmt.Fprintf(w, "Metadata space:     %s used of %s (%d/%d blocks)\n",
		humanSize(int64(st.UsedMeta)*4096), humanSize(int64(st.TotalMeta)*4096), st.UsedMeta, st.TotalMeta)
	fmt.Fprintf(w, "State:              %s\n", state)
	fmt.Fprintf(w, "Devices:            %d, %d active\n", len(st.Devices), len(st.Active))
}

// deviceIDs parses thin device ids (24 bits).
func deviceIDs(args []string) ([]uint32, error) {
	ids := make([]uint32, len(args))
	for i, a := range args {
		n, err := strconv.ParseUint(a, 10, 32)
		if err != nil || n > thinp.MaxDeviceID {
			return nil, fmt.Errorf("%w: device id %q: want 0..%d", errdefs.ErrInvalid, a, thinp.MaxDeviceID)
		}
		ids[i] = uint32(n)
	}
	return ids, nil
}

// parseBytes reads a size in bytes with an optional binary unit: 512, 64K,
// 1G, 100GiB.
func parseBytes(s string) (int64, error) {
	num := strings.TrimRight(strings.ToUpper(s), "IB")
	shift := 0
	if i := strings.IndexAny(num, "KMGTP"); i >= 0 && i == len(num)-1 {
		shift = 10 * (1 + strings.IndexByte("KMGTP", num[i]))
		num = num[:i]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("%w: size %q: want a number of bytes, with K, M, G, T or P", errdefs.ErrInvalid, s)
	}
	return n << shift, nil
}
