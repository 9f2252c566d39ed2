# strata: `make demo` builds and runs the main job; `make test` installs what the
# tests need and runs them all (CI runs exactly that).
GO      ?= go
IMAGES  ?= /var/tmp/strata-images
export STRATA_TEST_IMAGES := $(IMAGES)
# A static binary starts about 1 ms sooner (no dynamic loader): a seventh
# of what a `strata create` costs.
export CGO_ENABLED := 0

.PHONY: build demo test test-deps images bench bench-containers bench-daemon bench-aufs bench-btrfs bench-devicemapper bench-thin

build:
	$(GO) build -o bin/strata ./cmd/strata

demo: build
	./scripts/demo.sh

# System packages: docker.io (a real dockerd and docker CLI to compare with and
# to drive the daemon), debootstrap, skopeo and libcap2-bin (to build the
# realistic test images), python3, time and bc (bench), fuse3 (aufs),
# thin-provisioning-tools, e2fsprogs and xfsprogs (the thin pool and
# devicemapper), btrfs-progs (btrfs), fuse-overlayfs (bench/aufs.sh compares).
DEPS := docker.io debootstrap skopeo libcap2-bin python3 time bc fuse3 \
	thin-provisioning-tools e2fsprogs xfsprogs btrfs-progs fuse-overlayfs
test-deps:
	@need=""; for p in $(DEPS); do \
	  dpkg -s $$p >/dev/null 2>&1 || need="$$need $$p"; done; \
	if [ -n "$$need" ]; then apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; fi

# The realistic images built with a real Docker (whiteouts, hard links, xattrs,
# 20k small files, a 100 MB file), kept out of git.
images: test-deps
	@[ -f $(IMAGES)/app.tar ] || ./scripts/make-images.sh $(IMAGES)

test: test-deps images build
	$(GO) vet ./...
	./scripts/test.sh

bench: test-deps images build
	./bench/load.sh $(IMAGES)/app.tar

bench-containers: test-deps images build
	./bench/containers.sh $(IMAGES)/app.tar

bench-daemon: test-deps images build
	./bench/daemon.sh $(IMAGES)

bench-aufs: test-deps images build
	./bench/aufs.sh $(IMAGES)/app.tar

bench-btrfs: test-deps images build
	./bench/btrfs.sh $(IMAGES)/app.tar

bench-devicemapper: test-deps images build
	./bench/devicemapper.sh $(IMAGES)/app.tar

bench-thin: test-deps build
	./bench/thin.sh
