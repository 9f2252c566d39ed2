package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/strata-storage/strata/errdefs"
)

// jsonStream writes the Engine API's progress stream: one JSON message per
// line, each flushed, so that the CLI shows progress as it happens. The
// status (200) is sent with the first message; an error after that can only
// be a message of the stream, which the CLI prints and exits 1 on.
type jsonStream struct {
	w       http.ResponseWriter
	enc     *json.Encoder
	started bool
}

// streamMessage is one line of the stream.
type streamMessage struct {
	Stream         string          `json:"stream,omitempty"`
	Status         string          `json:"status,omitempty"`
	ProgressDetail *progressDetail `json:"progressDetail,omitempty"`
	Progress       string          `json:"progress,omitempty"`
	ID             string          `json:"id,omitempty"`
	ErrorDetail    *errorDetail    `json:"errorDetail,omitempty"`
	Error          string          `json:"error,omitempty"`
}

type progressDetail struct {
	Current int64 `json:"current"`
	Total   int64 `json:"total,omitempty"`
}

type errorDetail struct {
	Message string `json:"message"`
}

func newJSONStream(w http.ResponseWriter) *jsonStream {
	return &jsonStream{w: w, enc: json.NewEncoder(w)}
}

func (s *jsonStream) write(m streamMessage) error {
	if !s.started {
		s.w.Header().Set("Content-Type", "application/json")
		s.w.WriteHeader(http.StatusOK)
		s.started = true
	}
	if err := s.enc.Encode(m); err != nil {
		return err
	}
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

// Progress writes one progress line for id: status, with a bar when total
// is known.
func (s *jsonStream) Progress(id, status string, current, total int64) error {
	return s.write(streamMessage{Status: status, ID: id,
		ProgressDetail: &progressDetail{Current: current, Total: total},
		Progress:       progressBar(current, total)})
}

// Stream writes a line of text (a newline is added).
func (s *jsonStream) Stream(msg string) error {
	return s.write(streamMessage{Stream: msg + "\n"})
}

// Error writes err as the stream's last message.
func (s *jsonStream) Error(err error) error {
	msg := errdefs.Message(err)
	return s.write(streamMessage{ErrorDetail: &errorDetail{Message: msg}, Error: msg})
}

// Started reports whether the status line went out: before it, an error
// is still an ordinary error response.
func (s *jsonStream) Started() bool { return s.started }

// progressBar draws Docker's "[====>     ]  1.2MB/3.4MB".
func progressBar(current, total int64) string {
	if total <= 0 {
		return humanSize(current)
	}
	const width = 50
	n := int(min(current, total) * width / total)
	bar := strings.Repeat("=", n)
	if n < width {
		bar += ">" + strings.Repeat(" ", width-n-1)
	}
	return fmt.Sprintf("[%s] %8s/%s", bar, humanSize(current), humanSize(total))
}

// humanSize is Docker's decimal size: 1.2MB.
func humanSize(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB"}
	f := float64(n)
	i := 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	return fmt.Sprintf("%.4g%s", f, units[i])
}
