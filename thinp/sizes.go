package thinp

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// saveSizes writes the virtual size of each device to path, atomically.
func saveSizes(path string, sizes map[uint32]int64) error {
	byID := make(map[string]int64, len(sizes))
	for id, size := range sizes {
		byID[strconv.FormatUint(uint64(id), 10)] = size
	}
	b, err := json.Marshal(byID)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if err := errors.Join(err, tmp.Close()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func loadSizes(path string) (map[uint32]int64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[uint32]int64{}, nil
	}
	if err != nil {
		return nil, err
	}
	var byID map[string]int64
	if err := json.Unmarshal(b, &byID); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sizes := make(map[uint32]int64, len(byID))
	for s, size := range byID {
		id, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%s: device id %q: %w", path, s, err)
		}
		sizes[uint32(id)] = size
	}
	return sizes, nil
}
