package container_test

import (
	"testing"

	_ "github.com/strata-storage/strata/driver/btrfs"
	"github.com/strata-storage/strata/internal/testfs"
)

// Every container case runs on btrfs too, on a file system of its own.
func init() {
	drivers = append(drivers, testDriver{"btrfs", func(t *testing.T) string { return testfs.Btrfs(t) }})
}
