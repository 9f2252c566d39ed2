package daemon

import (
	"encoding/json"
	"slices"
)

// filters is the filters query parameter: values by key. Clients send two
// encodings, {"reference":{"busybox":true}} (the CLI) and
// {"reference":["busybox"]} (newer SDKs); both are read.
type filters map[string][]string

// parseFilters parses param, refusing keys not in allowed with Docker's
// "invalid filter" message.
func parseFilters(param string, allowed ...string) (filters, error) {
	f := filters{}
	if param == "" {
		return f, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(param), &raw); err != nil {
		return nil, badRequest("invalid filters: %v", err)
	}
	for key, v := range raw {
		if !slices.Contains(allowed, key) {
			return nil, badRequest("invalid filter '%s'", key)
		}
		var list []string
		if err := json.Unmarshal(v, &list); err != nil {
			var set map[string]bool
			if err := json.Unmarshal(v, &set); err != nil {
				return nil, badRequest("invalid filter '%s': %v", key, err)
			}
			for k, on := range set {
				if on {
					list = append(list, k)
				}
			}
			slices.Sort(list)
		}
		f[key] = list
	}
	return f, nil
}
