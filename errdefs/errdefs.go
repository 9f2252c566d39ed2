// Package errdefs holds the sentinel errors shared by every strata package.
// Wrap them with %w and test with errors.Is; a caller maps them to exit codes
// or HTTP status codes without parsing messages.
package errdefs

import (
	"errors"
	"strings"
)

var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrInUse        = errors.New("in use")
	ErrInvalid      = errors.New("invalid argument")
	ErrNotSupported = errors.New("not supported")
)

// Message returns the text of err for a person: without the sentinel's own
// words (": not found", "invalid argument: "), which tell programs what kind
// of error it is and which the rest of the message already says.
func Message(err error) string {
	if j, ok := err.(interface{ Unwrap() []error }); ok { // errors.Join: a line each
		lines := make([]string, 0, len(j.Unwrap()))
		for _, e := range j.Unwrap() {
			lines = append(lines, Message(e))
		}
		return strings.Join(lines, "\n")
	}
	msg := err.Error()
	for _, s := range []error{ErrNotFound, ErrExists, ErrInUse, ErrInvalid, ErrNotSupported} {
		if errors.Is(err, s) {
			msg = strings.TrimPrefix(strings.TrimSuffix(msg, ": "+s.Error()), s.Error()+": ")
		}
	}
	return msg
}
