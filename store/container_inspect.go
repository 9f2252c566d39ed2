package store

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/container"
)

// This file turns container records into the views that `ps` and `container
// inspect` show, so that the CLI and the daemon print the same.

// ContainerSize returns what Docker reports as SizeRw (the content bytes of
// the read-write layer) and SizeRootFs (those plus the image's layers).
func (s *Store) ContainerSize(c container.Container) (rw, rootfs int64, err error) {
	if rw, err = s.ctrs.SizeRw(c); err != nil {
		return 0, 0, err
	}
	rootfs = rw
	// The chain, not the image record: the image may be gone (rmi -f).
	for chain := c.Top; chain != ""; {
		l, err := s.layers.Get(chain)
		if err != nil {
			return 0, 0, fmt.Errorf("container %s: %w", c.ID[:12], err)
		}
		rootfs += l.Size
		chain = l.Parent
	}
	return rw, rootfs, nil
}

// Command returns the path and arguments a runtime would start c with:
// the image's entrypoint followed by its command.
func Command(c container.Container) (path string, args []string) {
	var cfg struct{ Entrypoint, Cmd []string }
	if len(c.Config) > 0 {
		json.Unmarshal(c.Config, &cfg) // checked when the image was loaded
	}
	argv := append(cfg.Entrypoint, cfg.Cmd...)
	if len(argv) == 0 {
		return "", []string{}
	}
	return argv[0], append([]string{}, argv[1:]...)
}

// ContainerInspect is `container inspect`'s JSON, in the Docker Engine API's
// shape, with what a container that never ran has.
type ContainerInspect struct {
	ID              string          `json:"Id"`
	Created         string          `json:"Created"`
	Path            string          `json:"Path"`
	Args            []string        `json:"Args"`
	State           ContainerState  `json:"State"`
	Image           digest.Digest   `json:"Image"`
	ResolvConfPath  string          `json:"ResolvConfPath"`
	HostnamePath    string          `json:"HostnamePath"`
	HostsPath       string          `json:"HostsPath"`
	LogPath         string          `json:"LogPath"`
	Name            string          `json:"Name"`
	RestartCount    int             `json:"RestartCount"`
	Driver          string          `json:"Driver"`
	Platform        string          `json:"Platform"`
	MountLabel      string          `json:"MountLabel"`
	ProcessLabel    string          `json:"ProcessLabel"`
	AppArmorProfile string          `json:"AppArmorProfile"`
	ExecIDs         []string        `json:"ExecIDs"`
	GraphDriver     GraphDriver     `json:"GraphDriver"`
	SizeRw          *int64          `json:"SizeRw,omitempty"`
	SizeRootFs      *int64          `json:"SizeRootFs,omitempty"`
	Mounts          []struct{}      `json:"Mounts"`
	Config          ContainerConfig `json:"Config"`
}

// ContainerState is the state of a container that was created and never
// started: strata runs no process.
type ContainerState struct {
	Status     string `json:"Status"`
	Running    bool   `json:"Running"`
	Paused     bool   `json:"Paused"`
	Restarting bool   `json:"Restarting"`
	OOMKilled  bool   `json:"OOMKilled"`
	Dead       bool   `json:"Dead"`
	Pid        int    `json:"Pid"`
	ExitCode   int    `json:"ExitCode"`
	Error      string `json:"Error"`
	StartedAt  string `json:"StartedAt"`
	FinishedAt string `json:"FinishedAt"`
}

// ContainerConfig is the container's config as Docker shows it: the image
// config's, with the container's hostname and image reference.
type ContainerConfig struct {
	Hostname     string              `json:"Hostname"`
	Domainname   string              `json:"Domainname"`
	User         string              `json:"User"`
	AttachStdin  bool                `json:"AttachStdin"`
	AttachStdout bool                `json:"AttachStdout"`
	AttachStderr bool                `json:"AttachStderr"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Tty          bool                `json:"Tty"`
	OpenStdin    bool                `json:"OpenStdin"`
	StdinOnce    bool                `json:"StdinOnce"`
	Env          []string            `json:"Env"`
	Cmd          []string            `json:"Cmd"`
	Image        string              `json:"Image"`
	Volumes      map[string]struct{} `json:"Volumes"`
	WorkingDir   string              `json:"WorkingDir"`
	Entrypoint   []string            `json:"Entrypoint"`
	OnBuild      []string            `json:"OnBuild"`
	Labels       map[string]string   `json:"Labels"`
	StopSignal   string              `json:"StopSignal,omitempty"`
}

// zeroTime is how the Engine API spells "never".
const zeroTime = "0001-01-01T00:00:00Z"

// InspectContainer returns the inspect view of c; size adds SizeRw and
// SizeRootFs, which cost a walk of the read-write layer.
func (s *Store) InspectContainer(c container.Container, size bool) (ContainerInspect, error) {
	var cfg ContainerConfig
	if len(c.Config) > 0 {
		if err := json.Unmarshal(c.Config, &cfg); err != nil {
			return ContainerInspect{}, fmt.Errorf("container %s: config: %w", c.ID[:12], err)
		}
	}
	if cfg.Hostname == "" { // docker create --hostname keeps its own
		cfg.Hostname = c.ID[:12]
	}
	cfg.Image = c.ImageRef
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	path, args := Command(c)
	in := ContainerInspect{
		ID:      c.ID,
		Created: c.Created.UTC().Format(time.RFC3339Nano),
		Path:    path,
		Args:    args,
		State: ContainerState{
			Status:    "created",
			StartedAt: zeroTime, FinishedAt: zeroTime,
		},
		Image:       c.Image,
		Name:        "/" + c.Name,
		Driver:      s.driver.String(),
		Platform:    "linux",
		GraphDriver: GraphDriver{Name: s.driver.String(), Data: map[string]string{}},
		Mounts:      []struct{}{},
		Config:      cfg,
	}
	if data, err := s.driver.Metadata(c.ID); err == nil {
		in.GraphDriver.Data = data
	}
	if size {
		rw, rootfs, err := s.ContainerSize(c)
		if err != nil {
			return ContainerInspect{}, err
		}
		in.SizeRw, in.SizeRootFs = &rw, &rootfs
	}
	return in, nil
}
