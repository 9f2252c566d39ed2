package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/strata-storage/strata/errdefs"
)

// newThinCommand is a placeholder until its issue lands.
func newThinCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "thin",
		Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			return errors.Join(errdefs.ErrNotSupported, errors.New("thin: not built yet"))
		},
	}
}
