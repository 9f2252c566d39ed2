#!/usr/bin/env bash
# drivers.sh ARCHIVE [N]: one strata driver against others, in one run, all on
# one file system, on the first image of a docker save archive. DRIVERS lists
# them, the one measured first (default "btrfs overlay vfs"); FS=btrfs puts
# them all on a btrfs made here (a sparse loop file), else they share a
# directory in /var/tmp. btrfs.sh and devicemapper.sh call it.
#   load          RUNS times per driver (default 3), alternating, each into a
#                 fresh store, cold cache, until the layers are on disk
#   create, rm    per container, over N containers (default 50), alternating
#   diff, commit  one container per driver holding ~1,000 changes (500 files
#                 of the image rewritten, 500 added: one tar extracted into
#                 `strata mount`), RUNS times each, alternating, warm cache;
#                 a commit is timed until its layer is on disk (a sync after)
# Every command is timed from the shell, CLI start included. Prints the
# medians, the ratios other driver / first driver (above 1: the first is
# faster) and the issue's targets for the first driver.
set -euo pipefail
ARCHIVE=$(realpath "${1:?usage: drivers.sh ARCHIVE [N]}")
N=${2:-50}
RUNS=${RUNS:-3}
read -r -a DRIVERS <<<"${DRIVERS:-btrfs overlay vfs}"
first=${DRIVERS[0]}
cd "$(dirname "$0")/.."
work=$(mktemp -d /var/tmp/strata-bench.XXXXXX)
STRATA=${STRATA:-$work/strata-bin}
[ -x "$STRATA" ] || CGO_ENABLED=0 go build -o "$STRATA" ./cmd/strata
fs=$work/fs
cleanup() {
  set +e # a step that finds nothing to do must not stop the cleanup
  for p in "$fs"/*/devicemapper/pool; do [ -d "$p" ] && "$STRATA" thin --pool "$p" pool stop; done
  grep -o " $fs/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  umount "$fs" 2>/dev/null || umount -l "$fs" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$fs"
if [ "${FS:-}" = btrfs ]; then
truncate -s 60G "$work/btrfs.img"
# mkfs.btrfs (before btrfs-progs 6.9) gives up when it cannot stat the source
# of some mount, as with a FUSE mount whose server died: it runs in a mount
# namespace of its own, without the FUSE mounts.
unshare --mount --propagation private sh -c '
  awk "\$3 ~ /^fuse/ { print \$2 }" /proc/self/mounts |
    while read -r m; do umount -l "$(printf %b "$m")"; done
  exec mkfs.btrfs -q -f "$0"' "$work/btrfs.img" >"$work/mkfs.log" 2>&1 || { cat "$work/mkfs.log" >&2; exit 1; }
mount -o loop "$work/btrfs.img" "$fs" # util-linux sets autoclear: the loop device goes with the unmount
fi

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

printf 'image %s (%s), on %s (%s), %d containers for create/rm, %d runs for load/diff/commit\n' \
  "$image" "$(basename "$ARCHIVE")" "$(stat -f -c %T "$fs")" "$(uname -r)" "$N" "$RUNS"
printf 'diff lists:'; for d in "${DRIVERS[@]}"; do printf ' %s %d' "$d" "$(cat "$work/$d.listed")"; done; echo
printf '%-7s' op; for d in "${DRIVERS[@]}"; do printf ' %14s' "$d"; done
for d in "${DRIVERS[@]:1}"; do printf ' %14s' "$d/$first"; done; echo
for op in load create diff commit rm; do
  printf '%-7s' "$op"
  for d in "${DRIVERS[@]}"; do printf ' %11.1f ms' "$(median "$d.$op")"; done
  for d in "${DRIVERS[@]:1}"; do printf ' %13.2fx' "$(echo "$(median "$d.$op") / $(median "$first.$op")" | bc -l)"; done
  echo
done
# check WHAT VALUE OP LIMIT: one target line.
check() { printf 'target: %s: %.2f %s\n' "$1" "$2" "$( (($(echo "$2 $3 $4" | bc))) && echo ok || echo MISSED)"; }
case $first in
  btrfs) check "btrfs create < 10 ms" "$(median btrfs.create)" '<' 10 ;;
  devicemapper)
    check "devicemapper create < 20 ms" "$(median devicemapper.create)" '<' 20
    check "devicemapper load <= 2x overlay's" "$(echo "$(median devicemapper.load) / $(median overlay.load)" | bc -l)" '<=' 2 ;;
esac
