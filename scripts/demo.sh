#!/usr/bin/env bash
# demo.sh: strata's main job end to end on the embedded default store, with no
# daemon and no network. It makes a small two-image archive from files of this
# host (a base layer with /etc and one with /usr/bin/env, in the docker save
# format), loads it, lists the images and their layer tree, saves them back
# out and checks that every saved layer has the digest the config names;
# then makes a container of it, changes files in it, diffs and commits it.
# Configs carry a fixed date, so that a second run finds the same images.
set -euo pipefail
STRATA=${STRATA:-$(cd "$(dirname "$0")/.." && pwd)/bin/strata}
work=$(mktemp -d /var/tmp/strata-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

sha() { sha256sum "$1" | cut -d' ' -f1; }
mkdir -p l1 l2 out
tar -C / -cf l1.tar --exclude='etc/ssl/private' etc/os-release etc/passwd etc/group etc/hostname bin 2>/dev/null || true
tar -C / -cf l2.tar usr/bin/env
d1=$(sha l1.tar); d2=$(sha l2.tar)
now=2026-01-01T00:00:00Z
config() { # config DIFFIDS HISTORY
  printf '{"architecture":"amd64","os":"linux","created":"%s","config":{"Cmd":["/usr/bin/env"]},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' "$now" "$1" "$2"
}
config "\"sha256:$d1\"" '{"created_by":"tar of host /etc","created":"'$now'"}' > base.json
config "\"sha256:$d1\",\"sha256:$d2\"" '{"created_by":"tar of host /etc","created":"'$now'"},{"created_by":"tar of /usr/bin/env","created":"'$now'"}' > app.json
cb=$(sha base.json); ca=$(sha app.json)
mkdir -p a/blobs/sha256
for f in l1.tar l2.tar base.json app.json; do cp $f a/blobs/sha256/$(sha $f); done
cat > a/manifest.json <<JSON
[{"Config":"blobs/sha256/$cb","RepoTags":["demo/base:1"],"Layers":["blobs/sha256/$d1"]},
 {"Config":"blobs/sha256/$ca","RepoTags":["demo/app:1"],"Layers":["blobs/sha256/$d1","blobs/sha256/$d2"]}]
JSON
tar -C a -cf demo.tar .

set -x
"$STRATA" load -i demo.tar
"$STRATA" images
"$STRATA" images --tree
"$STRATA" history demo/app:1
"$STRATA" save -o out.tar demo/app:1 demo/base:1
set +x
tar -C out -xf out.tar
for d in $d1 $d2; do
  [ "$(sha out/blobs/sha256/$d)" = "$d" ] || { echo "demo: saved layer $d differs" >&2; exit 1; }
done
echo "demo: saved layers are byte-identical to the loaded ones (sha256 $d1, $d2)"
"$STRATA" load -i out.tar

# A container: an init layer and a read-write layer on the image.
"$STRATA" rm -f demo 2>/dev/null || true
"$STRATA" rmi demo/app:2 >/dev/null 2>&1 || true # of an earlier run
set -x
"$STRATA" create --name demo demo/app:1
root=$("$STRATA" mount demo)
set +x
echo hello > "$root/hello.txt"
rm "$root/etc/os-release"
set -x
"$STRATA" diff demo
"$STRATA" commit -m "hello" demo demo/app:2
"$STRATA" umount demo
"$STRATA" rm demo
"$STRATA" images --tree
"$STRATA" info
