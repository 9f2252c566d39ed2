#!/usr/bin/env bash
# btrfs.sh ARCHIVE [N]: strata's btrfs driver against its overlay and vfs
# drivers, in one run, all three on one btrfs file system made here (a sparse
# loop file), on the first image of a docker save archive:
#   load          RUNS times per driver (default 3), alternating, each into a
#                 fresh store, cold cache, until the layers are on disk
#   create, rm    per container, over N containers (default 50), alternating
#   diff, commit  one container per driver holding ~1,000 changes (500 files
#                 of the image rewritten, 500 added: one tar extracted into
#                 `strata mount`), RUNS times each, alternating, warm cache;
#                 a commit is timed until its layer is on disk (a sync after)
# Every command is timed from the shell, CLI start included. Prints the
# medians, the ratios other driver / btrfs (above 1: btrfs is faster) and the
# issue's target (btrfs create under 10 ms).
set -euo pipefail
ARCHIVE=$(realpath "${1:?usage: btrfs.sh ARCHIVE [N]}")
N=${2:-50}
RUNS=${RUNS:-3}
DRIVERS=(btrfs overlay vfs)
cd "$(dirname "$0")/.."
work=$(mktemp -d /var/tmp/strata-bench.XXXXXX)
STRATA=${STRATA:-$work/strata-bin}
[ -x "$STRATA" ] || CGO_ENABLED=0 go build -o "$STRATA" ./cmd/strata
fs=$work/fs
cleanup() {
  set +e # a step that finds nothing to do must not stop the cleanup
  grep -o " $fs/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  umount "$fs" 2>/dev/null || umount -l "$fs" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
truncate -s 60G "$work/btrfs.img"
# mkfs.btrfs (before btrfs-progs 6.9) gives up when it cannot stat the source
# of some mount, as with a FUSE mount whose server died: it runs in a mount
# namespace of its own, without the FUSE mounts.
unshare --mount --propagation private sh -c '
  awk "\$3 ~ /^fuse/ { print \$2 }" /proc/self/mounts |
    while read -r m; do umount -l "$(printf %b "$m")"; done
  exec mkfs.btrfs -q -f "$0"' "$work/btrfs.img" >"$work/mkfs.log" 2>&1 || { cat "$work/mkfs.log" >&2; exit 1; }
mkdir "$fs"
mount -o loop "$work/btrfs.img" "$fs" # util-linux sets autoclear: the loop device goes with the unmount

# S DRIVER [ROOT] -- ARGS...: strata on DRIVER's store (or ROOT).
S() {
  local d=$1 root=$fs/$1; shift
  [ "$1" != -- ] && { root=$1; shift; }
  shift
  "$STRATA" --root "$root" --storage-driver "$d" "$@"
}
now() { date +%s.%N; }
# timed FILE CMD...: runs CMD with its output in $out and appends its wall
# time in milliseconds to FILE.
out=$work/out
timed() {
  local f=$1 t0 t1; shift
  t0=$(now); "$@" >"$out"; t1=$(now)
  echo "($t1 - $t0) * 1000" | bc >>"$work/$f"
}
durable() { "$@"; sync; }
drop() { sync; sleep 1; echo 3 >/proc/sys/vm/drop_caches; }
median() { sort -g "$work/$1" | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# load: fresh stores, cold cache
for i in $(seq "$RUNS"); do
  for d in "${DRIVERS[@]}"; do
    drop
    timed "$d.load" durable S "$d" "$fs/load-$d-$i" -- load -q -i "$ARCHIVE"
  done
done
for d in "${DRIVERS[@]}"; do
  image=$(S "$d" -- load -i "$ARCHIVE" | sed -n 's/^Loaded image: //p' | head -1)
done
[ -n "$image" ] || { echo "no tagged image in $ARCHIVE" >&2; exit 1; }

# create: N containers per driver, one at a time, alternating
for i in $(seq "$N"); do
  for d in "${DRIVERS[@]}"; do
    timed "$d.create" S "$d" -- create "$image"; cat "$out" >>"$work/$d.ids"
  done
done

# ~1,000 changes as one tar: 500 small files of the image rewritten, 500 added
for d in "${DRIVERS[@]}"; do
  c=$(S "$d" -- create "$image"); echo "$c" >"$work/$d.changed"
  mnt=$(S "$d" -- mount "$c")
  if [ ! -f "$work/changes.tar" ]; then
    (cd "$mnt" && find . -xdev -type f -size -8k | grep -E '^[[:alnum:]./_-]+$' | awk 'NR <= 500') >"$work/changes.list"
    stage=$work/stage
    while read -r f; do mkdir -p "$stage/$(dirname "$f")"; echo "rewritten $f" >"$stage/$f"; done <"$work/changes.list"
    for j in $(seq 500); do
      p=bench-added/d$((j % 20)); mkdir -p "$stage/$p"; echo "added $j" >"$stage/$p/f$j.txt"
    done
    (cd "$stage" && find ./bench-added) >>"$work/changes.list"
    tar -C "$stage" -cf "$work/changes.tar" --no-recursion -T "$work/changes.list"
  fi
  tar -C "$mnt" -xf "$work/changes.tar"
  S "$d" -- umount "$c"
done
sync

for op in diff commit; do
  for i in $(seq 0 "$RUNS"); do # run 0 warms the cache and is not counted
    f=$op; [ "$i" = 0 ] && f=warmup
    for d in "${DRIVERS[@]}"; do
      c=$(cat "$work/$d.changed")
      case $op in
        diff)   timed "$d.$f" S "$d" -- diff "$c"; wc -l <"$out" >"$work/$d.listed" ;;
        commit) # a new file each run, so that every commit makes a new layer
                echo "run $i" >"$work/run"; S "$d" -- cp "$work/run" "$c:/bench-run"; sync
                timed "$d.$f" durable S "$d" -- commit "$c" "bench-commit:$i" ;;
      esac
    done
  done
done

# rm: the N containers of the create phase, alternating
for i in $(seq "$N"); do
  for d in "${DRIVERS[@]}"; do
    timed "$d.rm" S "$d" -- rm "$(sed -n "${i}p" "$work/$d.ids")"
  done
done

printf 'image %s (%s), on one btrfs (%s), %d containers for create/rm, %d runs for load/diff/commit\n' \
  "$image" "$(basename "$ARCHIVE")" "$(uname -r)" "$N" "$RUNS"
printf 'diff lists: btrfs %d, overlay %d, vfs %d changes\n' \
  "$(cat "$work/btrfs.listed")" "$(cat "$work/overlay.listed")" "$(cat "$work/vfs.listed")"
printf '%-7s %11s %11s %11s %14s %10s\n' op btrfs overlay vfs overlay/btrfs vfs/btrfs
for op in load create diff commit rm; do
  b=$(median "btrfs.$op"); o=$(median "overlay.$op"); v=$(median "vfs.$op")
  printf '%-7s %8.1f ms %8.1f ms %8.1f ms %13.2fx %9.2fx\n' "$op" "$b" "$o" "$v" \
    "$(echo "$o / $b" | bc -l)" "$(echo "$v / $b" | bc -l)"
done
b=$(median btrfs.create)
printf 'target: btrfs create < 10 ms: %.1f ms %s\n' "$b" "$( (($(echo "$b < 10" | bc))) && echo ok || echo MISSED)"
