package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-storage/strata/daemon"
	"github.com/strata-storage/strata/errdefs"
)

// newDaemonCommand is `strata daemon`: the Docker Engine API on a unix
// socket (or on TCP with mutual TLS), over the store the global flags name.
// The strata CLI may use the same store meanwhile; a second daemon may not.
func newDaemonCommand(g *globals) *cobra.Command {
	var (
		hosts                  []string
		tlsVerify              bool
		tlsCA, tlsCert, tlsKey string
		shutdownTimeout        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Serve the Docker Engine API on a socket, for the docker CLI and SDKs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := daemon.Options{Hosts: hosts, SocketGroup: "strata", ShutdownTimeout: shutdownTimeout}
			if tlsVerify {
				cfg, err := daemon.MutualTLS(tlsCA, tlsCert, tlsKey)
				if err != nil {
					return err
				}
				opts.TLS = cfg
			} else if tlsCA != "" || tlsCert != "" || tlsKey != "" {
				return fmt.Errorf("--tlscacert, --tlscert and --tlskey need --tlsverify: %w", errdefs.ErrInvalid)
			}
			if err := opts.Check(); err != nil {
				return err
			}
			return runDaemon(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&hosts, "host", "H", []string{daemon.DefaultHost}, "address to listen on: unix:///path, or tcp://host:port with --tlsverify (repeatable)")
	f.BoolVar(&tlsVerify, "tlsverify", false, "serve tcp hosts with TLS, clients must present a certificate signed by --tlscacert")
	f.StringVar(&tlsCA, "tlscacert", "", "CA certificate that signs client certificates")
	f.StringVar(&tlsCert, "tlscert", "", "server certificate")
	f.StringVar(&tlsKey, "tlskey", "", "server key")
	f.DurationVar(&shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGTERM or SIGINT, how long requests under way may finish before they are cancelled")
	return cmd
}

// runDaemon serves until SIGTERM or SIGINT, then closes the store, which
// releases the mounts the daemon holds.
func runDaemon(ctx context.Context, g *globals, opts daemon.Options) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	root, err := filepath.Abs(g.root)
	if err != nil {
		return err
	}
	release, err := daemon.LockRoot(root)
	if err != nil {
		return err
	}
	defer release()
	s, err := g.open()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	log.Info("strata daemon", "root", s.Root(), "driver", s.Driver().String(), "pid", os.Getpid())
	err = daemon.New(s, log).Serve(ctx, opts)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	log.Info("stopped")
	return err
}
