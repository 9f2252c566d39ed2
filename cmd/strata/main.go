// Command strata is the storage half of a container engine: it loads, lists,
// saves and removes images kept by a graph driver, on an embedded store that
// needs no daemon.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/store" // registers every driver
)

// globals are the flags every command shares.
type globals struct {
	root       string
	driver     string
	driverOpts []string
}

func main() {
	if err := newRootCommand().Execute(); err != nil {
		for _, line := range strings.Split(errdefs.Message(err), "\n") {
			fmt.Fprintln(os.Stderr, "strata:", line)
		}
		os.Exit(exitCode(err))
	}
}

// exitCode maps the sentinel errors to distinct exit codes for scripts.
func exitCode(err error) int {
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return 2
	case errors.Is(err, errdefs.ErrInUse), errors.Is(err, errdefs.ErrExists):
		return 3
	case errors.Is(err, errdefs.ErrInvalid):
		return 4
	}
	return 1
}

func newRootCommand() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "strata",
		Short:         "Container image and file-system storage",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.root, "root", store.DefaultRoot(), "root directory of the store")
	root.PersistentFlags().StringVar(&g.driver, "storage-driver", "", "storage driver (default: automatic; one of "+fmt.Sprint(driver.Names())+")")
	root.PersistentFlags().StringArrayVar(&g.driverOpts, "storage-opt", nil, "storage driver option key=value")

	root.AddCommand(
		newLoadCommand(g), newSaveCommand(g), newImportCommand(g),
		newImagesCommand(g), newImageCommand(g), newHistoryCommand(g),
		newTagCommand(g), newRmiCommand(g), newInfoCommand(g),
	)
	root.AddCommand(containerCommands(g)...)
	root.AddCommand(fsCommands(g)...)
	root.AddCommand(newDaemonCommand(g), newThinCommand(g))
	return root
}

// open opens the store the global flags name.
func (g *globals) open() (*store.Store, error) {
	opts, err := driver.ParseOptions(g.driverOpts)
	if err != nil {
		return nil, err
	}
	return store.Open(store.Options{Root: g.root, Driver: g.driver, DriverOptions: opts})
}

// withStore runs fn on the open store and closes it.
func (g *globals) withStore(fn func(*store.Store) error) error {
	s, err := g.open()
	if err != nil {
		return err
	}
	err = fn(s)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}
