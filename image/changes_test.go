package image

import (
	"errors"
	"maps"
	"slices"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/errdefs"
)

func TestApplyChanges(t *testing.T) {
	base := ocispec.ImageConfig{Env: []string{"A=1"}, Labels: map[string]string{"l": "1"}}
	cfg, err := ApplyChanges(base, []string{
		`VOLUME ["/data", "/logs"]`,
		`VOLUME /cache`,
		`STOPSIGNAL SIGQUIT`,
		`ENV A=2`,
		`LABEL l=2`,
		`CMD ["sleep", "1"]`,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(cfg.Volumes)); !slices.Equal(got, []string{"/cache", "/data", "/logs"}) {
		t.Errorf("volumes %v", got)
	}
	if cfg.StopSignal != "SIGQUIT" || !slices.Equal(cfg.Cmd, []string{"sleep", "1"}) {
		t.Errorf("stop signal %q cmd %q", cfg.StopSignal, cfg.Cmd)
	}
	if cfg.Env[0] != "A=2" || cfg.Labels["l"] != "2" {
		t.Errorf("env %q labels %v", cfg.Env, cfg.Labels)
	}
	if base.Env[0] != "A=1" || base.Labels["l"] != "1" {
		t.Errorf("the input config was modified: env %q labels %v", base.Env, base.Labels)
	}
	for _, bad := range []string{`VOLUME`, `STOPSIGNAL`, `STOPSIGNAL a b`} {
		if _, err := ApplyChanges(ocispec.ImageConfig{}, []string{bad}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", bad, err)
		}
	}
	for _, unsupported := range []string{`RUN true`, `ONBUILD RUN true`, `FROM x`} {
		if _, err := ApplyChanges(ocispec.ImageConfig{}, []string{unsupported}); !errors.Is(err, errdefs.ErrNotSupported) {
			t.Errorf("%s: %v, want ErrNotSupported", unsupported, err)
		}
	}
}

func TestApplyChangesForms(t *testing.T) {
	for _, tc := range []struct {
		change string
		check  func(ocispec.ImageConfig) bool
	}{
		{`cmd echo hi`, func(c ocispec.ImageConfig) bool { return slices.Equal(c.Cmd, []string{"/bin/sh", "-c", "echo hi"}) }},
		{`ENTRYPOINT []`, func(c ocispec.ImageConfig) bool { return c.Entrypoint != nil && len(c.Entrypoint) == 0 }},
		{`ENV PATH /usr/bin:/bin`, func(c ocispec.ImageConfig) bool { return slices.Equal(c.Env, []string{"PATH=/usr/bin:/bin"}) }},
		{`ENV X=a\ b Y='$z'`, func(c ocispec.ImageConfig) bool { return slices.Equal(c.Env, []string{"X=a b", "Y=$z"}) }},
		{`EXPOSE 8000-8002/tcp`, func(c ocispec.ImageConfig) bool { return len(c.ExposedPorts) == 3 }},
		{`WORKDIR /a/../b`, func(c ocispec.ImageConfig) bool { return c.WorkingDir == "/b" }},
	} {
		c, err := ApplyChanges(ocispec.ImageConfig{}, []string{tc.change})
		if err != nil || !tc.check(c) {
			t.Errorf("%s: %+v, %v", tc.change, c, err)
		}
	}
	for _, bad := range []string{`EXPOSE 0`, `EXPOSE 80/xyz`, `LABEL novalue`, `ENV "unterminated`, `USER`, `WORKDIR`, `CMD`, `ONBUILD RUN x`} {
		if _, err := ApplyChanges(ocispec.ImageConfig{}, []string{bad}); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}
