package errdefs

import (
	"errors"
	"fmt"
	"testing"
)

func TestMessage(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("no such image: x: %w", ErrNotFound), "no such image: x"},
		{fmt.Errorf("%w: stdin is a terminal", ErrInvalid), "stdin is a terminal"},
		{fmt.Errorf("load: %w", fmt.Errorf("layer: %w", ErrInUse)), "load: layer"},
		{fmt.Errorf("disk full"), "disk full"},
		{errors.Join(fmt.Errorf("a: %w", ErrNotFound), fmt.Errorf("b: %w", ErrInUse)), "a\nb"},
	} {
		if got := Message(c.err); got != c.want {
			t.Errorf("Message(%q) = %q, want %q", c.err, got, c.want)
		}
	}
}
