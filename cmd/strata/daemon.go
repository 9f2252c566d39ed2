package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/strata-storage/strata/errdefs"
)

// newDaemonCommand is a placeholder until its issue lands.
func newDaemonCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "daemon",
		Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			return errors.Join(errdefs.ErrNotSupported, errors.New("daemon: not built yet"))
		},
	}
}
