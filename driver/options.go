package driver

import (
	"fmt"
	"slices"
	"strings"

	"github.com/strata-storage/strata/errdefs"
)

// ParseOptions turns --storage-opt values of the form key=value into a map.
// Keys are lower-cased, as drivers compare them that way.
func ParseOptions(opts []string) (map[string]string, error) {
	m := make(map[string]string, len(opts))
	for _, opt := range opts {
		key, value, ok := strings.Cut(opt, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		if !ok || key == "" {
			return nil, fmt.Errorf("storage option %q is not key=value: %w", opt, errdefs.ErrInvalid)
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("storage option %q given twice: %w", key, errdefs.ErrInvalid)
		}
		m[key] = strings.TrimSpace(value)
	}
	return m, nil
}

// CheckOptions fails with errdefs.ErrInvalid naming the first key of options
// that driver does not know.
func CheckOptions(driver string, options map[string]string, known ...string) error {
	keys := make([]string, 0, len(options))
	for k := range options {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !slices.Contains(known, k) {
			return fmt.Errorf("storage driver %s: unknown option %q: %w", driver, k, errdefs.ErrInvalid)
		}
	}
	return nil
}
