package image

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/metadata"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	db, err := metadata.Open(filepath.Join(t.TempDir(), "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	return NewStore(db)
}

// config returns a Docker-style config with the given diff IDs and a marker
// to make it unique; it carries fields ocispec.Image does not know.
func config(marker string, diffIDs ...digest.Digest) []byte {
	quoted := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		quoted[i] = fmt.Sprintf("%q", d)
	}
	return fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","docker_version":"1.4.1",`+
		`"container_config":{"Cmd":[%q]},"parent":"","config":{"Cmd":["/bin/sh"]},`+
		`"rootfs":{"type":"layers","diff_ids":[%s]}}`, marker, strings.Join(quoted, ","))
}

func create(t *testing.T, s *Store, marker string) Image {
	t.Helper()
	img, err := s.Create(config(marker, digest.FromString(marker)))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestNormalize(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"busybox", "docker.io/library/busybox:latest"},
		{"busybox:1.36", "docker.io/library/busybox:1.36"},
		{"library/busybox", "docker.io/library/busybox:latest"},
		{"docker.io/busybox", "docker.io/library/busybox:latest"},
		{"user/app:v1", "docker.io/user/app:v1"},
		{"localhost:5000/app", "localhost:5000/app:latest"},
		{"ghcr.io/org/app:2", "ghcr.io/org/app:2"},
		{"busybox@sha256:" + strings.Repeat("ab", 32), "docker.io/library/busybox@sha256:" + strings.Repeat("ab", 32)},
	} {
		got, err := Normalize(c.in)
		if err != nil || got.String() != c.want {
			t.Errorf("Normalize(%q) = %v, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "Busybox", "a b", strings.Repeat("ab", 32), "busybox:"} {
		if _, err := Normalize(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Normalize(%q): err = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestCreateValidatesAndIsIdempotent(t *testing.T) {
	s := newStore(t)
	cfg := config("x", digest.FromString("x"))
	img, err := s.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if img.ID != digest.FromBytes(cfg) || string(img.Config) != string(cfg) || img.Spec.Architecture != "amd64" {
		t.Errorf("Create = %+v", img)
	}
	again, err := s.Create(cfg)
	if err != nil || again.ID != img.ID || !again.Loaded.Equal(img.Loaded) {
		t.Errorf("second Create = %+v, %v", again, err)
	}
	for name, bad := range map[string]string{
		"not json":     `{"rootfs":`,
		"rootfs type":  `{"rootfs":{"type":"tarballs","diff_ids":[]}}`,
		"no rootfs":    `{"architecture":"amd64"}`,
		"bad diff ID":  `{"rootfs":{"type":"layers","diff_ids":["sha256:abc"]}}`,
		"bad digest":   `{"rootfs":{"type":"layers","diff_ids":["md5:abc"]}}`,
		"wrong shapes": `{"rootfs":{"type":"layers","diff_ids":"sha256:x"}}`,
	} {
		if _, err := s.Create([]byte(bad)); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestResolve(t *testing.T) {
	s := newStore(t)
	img := create(t, s, "one")
	other := create(t, s, "two")
	if err := s.Tag(img.ID, "busybox"); err != nil {
		t.Fatal(err)
	}
	repoDigest := "busybox@sha256:" + strings.Repeat("cd", 32)
	if err := s.Tag(img.ID, repoDigest); err != nil {
		t.Fatal(err)
	}
	hex := img.ID.Encoded()
	for _, ref := range []string{
		"busybox", "busybox:latest", "docker.io/library/busybox:latest",
		img.ID.String(), hex, hex[:12], hex[:4], "sha256:" + hex[:12],
		repoDigest, "docker.io/library/busybox@sha256:" + strings.Repeat("cd", 32),
		"busybox:latest@sha256:" + strings.Repeat("cd", 32),
	} {
		got, err := s.Resolve(ref)
		if err != nil || got.ID != img.ID {
			t.Errorf("Resolve(%q) = %s, %v; want %s", ref, got.ID, err, img.ID)
		}
	}
	for _, ref := range []string{"busybox:other", "nothing", "sha256:" + strings.Repeat("0", 64), "ffffffffffff", "sha256:xyz", "busybox@sha256:" + strings.Repeat("ef", 32)} {
		if _, err := s.Resolve(ref); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Resolve(%q): err = %v, want ErrNotFound", ref, err)
		}
	}

	// A prefix both IDs share is ambiguous.
	common := 0
	for common < 64 && img.ID.Encoded()[common] == other.ID.Encoded()[common] {
		common++
	}
	for i := 0; i < 200 && common == 0; i++ { // make two IDs that share a first digit
		other = create(t, s, fmt.Sprint("more", i))
		if other.ID.Encoded()[0] == hex[0] {
			common = 1
		}
	}
	if _, err := s.Resolve(hex[:common]); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("Resolve(%q): err = %v, want ambiguous", hex[:common], err)
	}
}

func TestTagMovesAndUntag(t *testing.T) {
	s := newStore(t)
	a, b := create(t, s, "a"), create(t, s, "b")
	for _, ref := range []string{"app:1", "app:latest", "other"} {
		if err := s.Tag(a.ID, ref); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Tag(b.ID, "app"); err != nil { // moves app:latest
		t.Fatal(err)
	}
	got, _ := s.Get(a.ID)
	if want := []string{"docker.io/library/app:1", "docker.io/library/other:latest"}; !slices.Equal(got.RepoTags, want) {
		t.Errorf("a's tags = %v, want %v", got.RepoTags, want)
	}
	got, _ = s.Get(b.ID)
	if want := []string{"docker.io/library/app:latest"}; !slices.Equal(got.RepoTags, want) {
		t.Errorf("b's tags = %v, want %v", got.RepoTags, want)
	}

	if err := s.Untag("app:1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Untag("app:1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second Untag: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Resolve("app:1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Resolve of an untagged ref: %v", err)
	}
	if err := s.Tag(digest.FromString("missing"), "x"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Tag of a missing image: err = %v", err)
	}
	if err := s.Tag(a.ID, "x:1@sha256:"+strings.Repeat("ab", 32)); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Tag with tag and digest: err = %v", err)
	}
}

func TestParentsChildrenDelete(t *testing.T) {
	s := newStore(t)
	parent, child := create(t, s, "parent"), create(t, s, "child")
	if err := s.SetParent(child.ID, parent.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.SetParent(child.ID, digest.FromString("missing")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("SetParent to a missing image: err = %v", err)
	}
	kids, err := s.Children(parent.ID)
	if err != nil || len(kids) != 1 || kids[0].ID != child.ID || kids[0].Parent != parent.ID {
		t.Errorf("Children = %+v, %v", kids, err)
	}
	if err := s.Tag(child.ID, "kid"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(child.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve("kid"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the deleted image's tag resolves: %v", err)
	}
	if imgs, _ := s.List(); len(imgs) != 1 || imgs[0].ID != parent.ID {
		t.Errorf("List = %+v", imgs)
	}
	if err := s.Delete(child.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second Delete: err = %v", err)
	}
}
