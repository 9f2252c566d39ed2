// Package reexec runs parts of strata as child processes of the executable
// that uses them. A mount server must outlive the command that started it,
// and strata is a library as much as a program (tests link it into their own
// binaries), so the child is the same executable started again with
// STRATA_REEXEC=<name>: whatever program linked the server in can run it.
package reexec

import (
	"os"
	"os/exec"
)

const envKey = "STRATA_REEXEC"

// Register makes name an entry point of this executable. It is called from
// a package's init: when this process was started by Command(name), it runs
// main and exits with its code, before the program's own main (or a test
// binary's tests) starts.
func Register(name string, main func() int) {
	if os.Getenv(envKey) == name {
		os.Unsetenv(envKey)
		os.Exit(main())
	}
}

// Command returns a command that runs the entry point name, with args, in a
// new process of this executable (/proc/self/exe still works after the file
// was replaced on disk).
func Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Env = append(os.Environ(), envKey+"="+name)
	return cmd
}
