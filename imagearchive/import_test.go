package imagearchive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"runtime"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/errdefs"
)

func TestImport(t *testing.T) {
	s := openStore(t)
	rootfs := makeTar(t, file{name: "bin/"}, file{name: "bin/hello", data: []byte("#!/bin/sh\necho hello\n")})
	img, err := Import(context.Background(), s, bytes.NewReader(gzipped(t, rootfs)), ImportOptions{
		Ref: "imported:1",
		Changes: []string{
			`CMD ["/bin/hello", "world"]`,
			`ENTRYPOINT /bin/sh`,
			`ENV A=1 B="two words"`,
			`ENV A=3`,
			`WORKDIR /srv`,
			`WORKDIR app`,
			`USER 1000:1000`,
			`LABEL purpose=test "with space"=yes`,
			`EXPOSE 80 53/udp`,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if img.ID != digest.FromBytes(img.Config) {
		t.Errorf("image ID %s is not the digest of its config", img.ID)
	}
	checkImage(t, s, img.Config, "imported:1")
	spec := img.Spec
	if !slices.Equal(spec.RootFS.DiffIDs, []digest.Digest{digest.FromBytes(rootfs)}) {
		t.Errorf("diff IDs %v, want the digest of the uncompressed tar", spec.RootFS.DiffIDs)
	}
	if spec.Architecture != runtime.GOARCH || spec.OS != "linux" || spec.Created == nil {
		t.Errorf("platform %+v created %v", spec.Platform, spec.Created)
	}
	if len(spec.History) != 1 || spec.History[0].Comment != "Imported from -" {
		t.Errorf("history %+v", spec.History)
	}
	c := spec.Config
	if !slices.Equal(c.Cmd, []string{"/bin/hello", "world"}) || !slices.Equal(c.Entrypoint, []string{"/bin/sh", "-c", "/bin/sh"}) {
		t.Errorf("cmd %q entrypoint %q", c.Cmd, c.Entrypoint)
	}
	if !slices.Equal(c.Env, []string{"A=3", "B=two words"}) {
		t.Errorf("env %q", c.Env)
	}
	if c.WorkingDir != "/srv/app" || c.User != "1000:1000" {
		t.Errorf("workdir %q user %q", c.WorkingDir, c.User)
	}
	if !maps.Equal(c.Labels, map[string]string{"purpose": "test", "with space": "yes"}) {
		t.Errorf("labels %v", c.Labels)
	}
	if !slices.Equal(slices.Sorted(maps.Keys(c.ExposedPorts)), []string{"53/udp", "80/tcp"}) {
		t.Errorf("exposed ports %v", c.ExposedPorts)
	}
	var raw map[string]any
	json.Unmarshal(img.Config, &raw)
	if raw["comment"] != "Imported from -" {
		t.Errorf("config comment %v", raw["comment"])
	}
}

func TestImportBadChangeLeavesStore(t *testing.T) {
	s := openStore(t)
	before := storeState(t, s)
	_, err := Import(context.Background(), s, bytes.NewReader(layerTar(t, "bad-change")), ImportOptions{Changes: []string{"RUN rm -rf /"}})
	if !errors.Is(err, errdefs.ErrNotSupported) {
		t.Errorf("error %v, want ErrNotSupported", err)
	}
	_, err = Import(context.Background(), s, bytes.NewReader([]byte("not a tar at all, too short")), ImportOptions{Message: "m"})
	if err == nil {
		t.Error("importing garbage succeeded")
	}
	if after := storeState(t, s); !slices.Equal(before, after) {
		t.Errorf("store changed:\n%v\n%v", before, after)
	}
}
