package daemon

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// serverHeader is the Server header of every response, as Docker's
// "Docker/<version> (linux)".
func serverHeader() string {
	return "strata/" + buildVersion() + " (" + runtime.GOOS + ")"
}

// ping answers the handshake every CLI command starts with. HEAD gets the
// headers alone.
func (d *Daemon) ping(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	h := w.Header()
	h.Set("Cache-Control", "no-cache, no-store, must-revalidate")
	h.Set("Pragma", "no-cache")
	h.Set("Swarm", "inactive")
	if r.Method == http.MethodHead {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return nil
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	_, err := w.Write([]byte("OK"))
	return err
}

type versionResponse struct {
	Platform      struct{ Name string }
	Components    []component
	Version       string
	APIVersion    string `json:"ApiVersion"`
	MinAPIVersion string `json:"MinAPIVersion"`
	GitCommit     string
	GoVersion     string
	Os            string
	Arch          string
	KernelVersion string
	BuildTime     string
}

type component struct {
	Name    string
	Version string
	Details map[string]string
}

func (d *Daemon) version(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	v := versionResponse{
		Version:       buildVersion(),
		APIVersion:    defaultAPIVersion,
		MinAPIVersion: minAPIVersion,
		GitCommit:     buildSetting("vcs.revision"),
		GoVersion:     runtime.Version(),
		Os:            runtime.GOOS,
		Arch:          runtime.GOARCH,
		KernelVersion: kernelVersion(),
		BuildTime:     buildSetting("vcs.time"),
	}
	v.Platform.Name = "strata"
	v.Components = []component{{Name: "Engine", Version: v.Version, Details: map[string]string{
		"ApiVersion": v.APIVersion, "MinAPIVersion": v.MinAPIVersion, "GitCommit": v.GitCommit,
		"GoVersion": v.GoVersion, "Os": v.Os, "Arch": v.Arch, "KernelVersion": v.KernelVersion,
		"BuildTime": v.BuildTime, "Experimental": "false",
	}}}
	return writeJSON(w, http.StatusOK, v)
}

// buildVersion is the module version the binary was built from, "dev"
// for a build from a checkout.
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func buildSetting(key string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == key {
				return s.Value
			}
		}
	}
	return ""
}

func kernelVersion() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func machine() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return runtime.GOARCH
	}
	return unix.ByteSliceToString(u.Machine[:])
}

type infoResponse struct {
	ID                 string
	Containers         int
	ContainersRunning  int
	ContainersPaused   int
	ContainersStopped  int
	Images             int
	Driver             string
	DriverStatus       [][2]string
	DockerRootDir      string
	ServerVersion      string
	OSType             string
	OperatingSystem    string
	OSVersion          string
	Architecture       string
	NCPU               int
	MemTotal           int64
	Name               string
	KernelVersion      string
	LoggingDriver      string
	CgroupDriver       string
	CgroupVersion      string
	IndexServerAddress string
	SystemTime         string
	Debug              bool
	NFd                int
	NGoroutines        int
	ExperimentalBuild  bool
	LiveRestoreEnabled bool
	Plugins            struct{ Volume, Network, Authorization, Log []string }
	Labels             []string
	SecurityOptions    []string
	Swarm              struct{ LocalNodeState string }
	Warnings           []string
}

// info is `docker info`'s server half. Every container strata keeps is
// created, never started, so all count as stopped, as Docker counts them.
func (d *Daemon) info(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	imgs, err := d.store.Images().List()
	if err != nil {
		return err
	}
	ctrs, err := d.store.Containers().List()
	if err != nil {
		return err
	}
	status := d.store.Driver().Status()
	if status == nil {
		status = [][2]string{}
	}
	host, _ := os.Hostname()
	var si unix.Sysinfo_t
	_ = unix.Sysinfo(&si)
	osName, osVersion := osRelease()
	in := infoResponse{
		ID:                 daemonID(host, d.store.Root()),
		Containers:         len(ctrs),
		ContainersStopped:  len(ctrs),
		Images:             len(imgs),
		Driver:             d.store.Driver().String(),
		DriverStatus:       status,
		DockerRootDir:      d.store.Root(),
		ServerVersion:      buildVersion(),
		OSType:             runtime.GOOS,
		OperatingSystem:    osName,
		OSVersion:          osVersion,
		Architecture:       machine(),
		NCPU:               runtime.NumCPU(),
		MemTotal:           int64(si.Totalram) * int64(si.Unit),
		Name:               host,
		KernelVersion:      kernelVersion(),
		LoggingDriver:      "none",
		CgroupDriver:       "none",
		CgroupVersion:      "2",
		IndexServerAddress: "https://index.docker.io/v1/",
		SystemTime:         time.Now().Format(time.RFC3339Nano),
		NFd:                openFiles(),
		NGoroutines:        runtime.NumGoroutine(),
		Labels:             []string{},
		SecurityOptions:    []string{},
		Warnings:           []string{},
	}
	in.Swarm.LocalNodeState = "inactive"
	in.Plugins.Volume, in.Plugins.Network, in.Plugins.Log = []string{}, []string{}, []string{}
	return writeJSON(w, http.StatusOK, in)
}

// openFiles is the number of file descriptors the daemon holds.
func openFiles() int {
	fds, _ := os.ReadDir("/proc/self/fd")
	return len(fds)
}

// daemonID is a stable identifier of this daemon: the host and the root it
// serves, in a UUID's shape as Docker's.
func daemonID(host, root string) string {
	h := sha256.Sum256([]byte(host + "\x00" + root))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// osRelease returns PRETTY_NAME and VERSION_ID of /etc/os-release.
func osRelease() (name, version string) {
	f, err := os.Open("/etc/os-release")
	if err != nil {
		return "Linux", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		v = strings.Trim(v, `"'`)
		switch k {
		case "PRETTY_NAME":
			name = v
		case "VERSION_ID":
			version = v
		}
	}
	if name == "" {
		name = "Linux"
	}
	return name, version
}
