package server

import (
	"errors"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/thinp"
)

// Requests on the control socket, one JSON object each way per connection.
const (
	opCreate     = "create"
	opSnap       = "snap"
	opDelete     = "delete"
	opActivate   = "activate"
	opDeactivate = "deactivate"
	opStatus     = "status"
	opUsage      = "usage" // status without the per-device walk
	opGrow       = "grow"
	opCheckCopy  = "check-copy"
	opStop       = "stop"
	// opHold keeps the server running for as long as its connection stays
	// open, active devices or not.
	opHold = "hold"
)

type request struct {
	Op           string `json:"op"`
	ID           uint32 `json:"id,omitempty"`
	Origin       uint32 `json:"origin,omitempty"`
	Size         int64  `json:"size,omitempty"`
	DataSize     int64  `json:"dataSize,omitempty"`
	MetadataSize int64  `json:"metadataSize,omitempty"`
	// OldTxID and NewTxID, when NewTxID is set, make a snap or delete
	// set the transaction id in its commit (set_transaction_id).
	OldTxID uint64 `json:"oldTransactionID,omitempty"`
	NewTxID uint64 `json:"newTransactionID,omitempty"`
}

type reply struct {
	Error  string            `json:"error,omitempty"`
	Kind   string            `json:"kind,omitempty"`
	Path   string            `json:"path,omitempty"`
	Status thinp.Status      `json:"status"`
	Active map[uint32]string `json:"active,omitempty"`
	Pid    int               `json:"pid,omitempty"`
}

// kinds carry the error sentinels across the socket.
var kinds = []struct {
	name string
	err  error
}{
	{"not-found", errdefs.ErrNotFound},
	{"exists", errdefs.ErrExists},
	{"in-use", errdefs.ErrInUse},
	{"invalid", errdefs.ErrInvalid},
	{"not-supported", errdefs.ErrNotSupported},
	{"no-space", thinp.ErrNoSpace},
}

func kindOf(err error) string {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return ""
}

// remoteError is an error of the server: its message, and the sentinel
// errors.Is finds.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

func (r *reply) err() error {
	if r.Error == "" {
		return nil
	}
	e := &remoteError{msg: r.Error}
	for _, k := range kinds {
		if k.name == r.Kind {
			e.kind = k.err
		}
	}
	return e
}
