// Package errdefs holds the sentinel errors shared by every strata package.
// Wrap them with %w and test with errors.Is; a caller maps them to exit codes
// or HTTP status codes without parsing messages.
package errdefs

import "errors"

var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrInUse        = errors.New("in use")
	ErrInvalid      = errors.New("invalid argument")
	ErrNotSupported = errors.New("not supported")
)
