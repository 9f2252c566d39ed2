// Command apitime times container create and remove through the Engine API,
// with the moby Go client, against two daemons in one run: dockerd and
// strata daemon, on the same image. It is what bench/daemon.sh uses to
// compare the storage engines without the docker CLI's start (tens of
// milliseconds per command, the same for both).
//
//	apitime -docker SOCK -strata SOCK -image REF [-n N]
//
// The creates alternate between the daemons, one at a time, then the
// removes. It prints the medians in milliseconds and the ratios
// docker/strata (higher is faster).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/moby/moby/client"
)

func main() {
	dockerSock := flag.String("docker", "", "dockerd's unix socket")
	strataSock := flag.String("strata", "", "strata daemon's unix socket")
	image := flag.String("image", "", "image to create containers of")
	n := flag.Int("n", 20, "containers per daemon")
	flag.Parse()
	if *dockerSock == "" || *strataSock == "" || *image == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*dockerSock, *strataSock, *image, *n); err != nil {
		fmt.Fprintln(os.Stderr, "apitime:", err)
		os.Exit(1)
	}
}

type daemon struct {
	name       string
	cli        *client.Client
	ids        []string
	create, rm []time.Duration
}

func run(dockerSock, strataSock, image string, n int) error {
	ctx := context.Background()
	var daemons []*daemon
	for _, d := range []struct{ name, sock string }{{"docker", dockerSock}, {"strata", strataSock}} {
		cli, err := client.New(client.WithHost("unix://"+d.sock), client.WithAPIVersionNegotiation())
		if err != nil {
			return err
		}
		defer cli.Close()
		if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil { // negotiates the version before timing
			return fmt.Errorf("%s: %w", d.name, err)
		}
		daemons = append(daemons, &daemon{name: d.name, cli: cli})
	}
	for range n {
		for _, d := range daemons {
			t := time.Now()
			r, err := d.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Image: image})
			if err != nil {
				return fmt.Errorf("%s: create: %w", d.name, err)
			}
			d.create = append(d.create, time.Since(t))
			d.ids = append(d.ids, r.ID)
		}
	}
	for i := range n {
		for _, d := range daemons {
			t := time.Now()
			if _, err := d.cli.ContainerRemove(ctx, d.ids[i], client.ContainerRemoveOptions{}); err != nil {
				return fmt.Errorf("%s: rm: %w", d.name, err)
			}
			d.rm = append(d.rm, time.Since(t))
		}
	}
	docker, strata := daemons[0], daemons[1]
	fmt.Printf("%-12s %12s %12s %10s\n", "API op", "docker", "strata", "ratio")
	row := func(op string, d, s []time.Duration) {
		dm, sm := median(d), median(s)
		fmt.Printf("%-12s %9.2f ms %9.2f ms %9.1fx\n", op, ms(dm), ms(sm), float64(dm)/float64(sm))
	}
	row("api-create", docker.create, strata.create)
	row("api-rm", docker.rm, strata.rm)
	return nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
