package container_test

import (
	"testing"

	_ "github.com/strata-storage/strata/driver/devicemapper"
)

// Every container case runs on devicemapper too: a thin pool in the store
// root, each layer a thin device with ext4 on it.
func init() {
	drivers = append(drivers, testDriver{"devicemapper", func(t *testing.T) string { return t.TempDir() }})
}
