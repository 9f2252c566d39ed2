package aufs

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// The aufs module path. No kernel strata is tested on has the module, so
// this is unverified: it follows the module's documented options.

// kernelHasAufs reports whether /proc/filesystems lists aufs.
func kernelHasAufs() bool {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 0 && fields[len(fields)-1] == "aufs" {
			return true
		}
	}
	return false
}

// mountKernel mounts branches (top first) with the aufs module: as many as
// fit in one page of options at mount, the rest appended by remounts.
func mountKernel(target string, branches []string, rw bool) error {
	mode := "=ro+wh"
	if rw {
		mode = "=rw"
	}
	opts := "br:" + branches[0] + mode
	rest := branches[1:]
	for len(rest) > 0 && len(opts)+len(rest[0])+len(":=ro+wh")+len(",dio,xino=/dev/shm/aufs.xino") < os.Getpagesize() {
		opts += ":" + rest[0] + "=ro+wh"
		rest = rest[1:]
	}
	opts += ",dio,xino=/dev/shm/aufs.xino"
	if err := unix.Mount("none", target, "aufs", 0, opts); err != nil {
		return fmt.Errorf("mount aufs at %s: %w", target, err)
	}
	for _, b := range rest {
		if err := unix.Mount("none", target, "aufs", unix.MS_REMOUNT, "append:"+b+"=ro+wh"); err != nil {
			unmount(target)
			return fmt.Errorf("mount aufs at %s: append branch %s: %w", target, b, err)
		}
	}
	return nil
}
