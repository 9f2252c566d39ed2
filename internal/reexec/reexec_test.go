package reexec

import (
	"strings"
	"testing"
)

func init() {
	Register("reexec-test-echo", func() int {
		print("child ran")
		return 3
	})
}

func TestCommandRunsRegisteredEntryPoint(t *testing.T) {
	out, err := Command("reexec-test-echo").CombinedOutput()
	code := -1
	if err != nil {
		if ee, ok := err.(interface{ ExitCode() int }); ok {
			code = ee.ExitCode()
		}
	}
	if code != 3 || !strings.Contains(string(out), "child ran") {
		t.Fatalf("exit %d, output %q; want 3 and the child's output", code, out)
	}
}
