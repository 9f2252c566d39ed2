package daemon

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/strata-storage/strata/errdefs"
)

// statusOf maps the sentinel errors to the status codes the Docker CLI
// expects.
func statusOf(err error) int {
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrExists), errors.Is(err, errdefs.ErrInUse):
		return http.StatusConflict
	case errors.Is(err, errdefs.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrNotSupported):
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}

// writeError writes err as the Engine API's error body. The content type
// must be exactly application/json: with a charset the CLI prints the raw
// body instead of the message.
func writeError(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(statusOf(err))
	_ = encodeJSON(w, struct {
		Message string `json:"message"`
	}{errdefs.Message(err)})
}

// badRequest, notFound and notSupported make errors carrying the sentinel
// of their status.
func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errdefs.ErrInvalid, fmt.Sprintf(format, args...))
}

func notFound(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrNotFound)
}

func notSupported(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrNotSupported)
}
