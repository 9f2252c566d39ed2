package container_test

import (
	"testing"

	_ "github.com/strata-storage/strata/driver/aufs"
)

// Every container case runs on aufs (strata's union file system over FUSE) too.
func init() {
	drivers = append(drivers, testDriver{"aufs", func(t *testing.T) string { return t.TempDir() }})
}
