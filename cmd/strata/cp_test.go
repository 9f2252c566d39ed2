package main

import (
	"errors"
	"testing"

	"github.com/strata-storage/strata/errdefs"
)

func TestSplitCpArg(t *testing.T) {
	for arg, want := range map[string]cpArg{
		"c:/etc":      {container: "c", path: "/etc"},
		"c:rel":       {container: "c", path: "rel"},
		"/abs:colon":  {path: "/abs:colon"},
		"./rel:colon": {path: "./rel:colon"},
		"plain":       {path: "plain"},
		"-":           {path: "-"},
	} {
		if got := splitCpArg(arg); got != want {
			t.Errorf("%q: %+v, want %+v", arg, got, want)
		}
	}
}

// TestCpDestination checks docker cp's table of source and destination
// kinds.
func TestCpDestination(t *testing.T) {
	for _, tc := range []struct {
		dst                        string
		exists, dstIsDir, srcIsDir bool
		name                       string
		dir, to                    string
		err                        error
	}{
		{"/d", true, true, false, "f", "/d", "f", nil},                 // file into an existing dir
		{"/d", true, true, true, "src", "/d", "src", nil},              // dir into an existing dir
		{"/d", true, true, true, "", "/d", "", nil},                    // a dir's content into an existing dir
		{"/x/f", true, false, false, "src", "/x", "f", nil},            // file over a file
		{"/x/f", true, false, true, "src", "", "", errdefs.ErrInvalid}, // dir over a file
		{"/x/new", false, false, false, "src", "/x", "new", nil},       // file as a new name
		{"/x/new/", false, false, false, "src", "", "", errdefs.ErrNotFound},
		{"/x/new", false, false, true, "src", "/x", "new", nil}, // dir as a new name
		{"/x/new/", false, false, true, "", "/x", "new", nil},   // a dir's content as a new dir
	} {
		dir, to, err := cpDestination(tc.dst, tc.exists, tc.dstIsDir, tc.srcIsDir, tc.name)
		if dir != tc.dir || to != tc.to || !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
			t.Errorf("%+v: %q %q %v", tc, dir, to, err)
		}
	}
}
