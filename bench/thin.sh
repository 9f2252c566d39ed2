#!/usr/bin/env bash
# thin.sh: strata's thin pool (package thinp, devices served by thinp/server)
# against a plain loop file on the same file system, in one run:
#   snapshot   create_snap + commit of a device with 1 GiB and with 100 GiB
#              mapped (the Go benchmark thinp.BenchmarkSnapshot: metadata
#              only, so that 100 GiB need no 100 GiB of data)
#   write      1 GiB written and fsynced into ext4 on the device
#   read       that file read back with O_DIRECT, cold cache
#   untar      20,000 small files extracted into ext4 on the device, synced
#   cow        the 1 GiB file overwritten in place after a snapshot of the
#              device (every block copied first) against the same overwrite
#              before the snapshot
# RUNS times each (default 3), thin and plain alternating; medians, ratios
# and the issue's targets.
set -euo pipefail
RUNS=${RUNS:-3}
cd "$(dirname "$0")/.."
work=$(mktemp -d /var/tmp/strata-bench.XXXXXX)
STRATA=${STRATA:-$work/strata-bin}
[ -x "$STRATA" ] || CGO_ENABLED=0 go build -o "$STRATA" ./cmd/strata
T=("$STRATA" thin --pool "$work/pool")
plain=""
cleanup() {
  set +e # a step that finds nothing to do must not stop the cleanup
  for m in "$work"/mnt-*; do umount "$m" 2>/dev/null; done
  [ -n "$plain" ] && losetup -d "$plain"
  "${T[@]}" pool stop 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
# timed FILE CMD...: appends CMD's wall time in milliseconds to FILE.
timed() {
  local f=$1 t0 t1; shift
  t0=$(now); "$@" >/dev/null 2>&1; t1=$(now)
  echo "($t1 - $t0) * 1000" | bc >>"$work/$f"
}
median() { sort -g "$work/$1" | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# snapshot cost, from the Go benchmark
snaps=$(go test -run XXX -bench 'Snapshot' -benchtime 100x ./thinp/ 2>&1 | awk '/^BenchmarkSnapshot/ {print $1, $3}')
snap1=$(awk '/mapped=1GiB/ {print $2 / 1e6}' <<<"$snaps")
snap100=$(awk '/mapped=100GiB/ {print $2 / 1e6}' <<<"$snaps")

# 20,000 small files, as one tar
mkdir -p "$work/tree"
python3 - "$work/tree" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(200):
    os.makedirs(f"{root}/d{d}")
    for f in range(100):
        with open(f"{root}/d{d}/f{f}", "w") as fh:
            fh.write(f"file {d}/{f}\n" * 20)
EOF
tar -C "$work/tree" -cf "$work/small.tar" .

"${T[@]}" pool create >/dev/null
"${T[@]}" create 0 --size 8G >/dev/null
thin=$("${T[@]}" activate 0)
truncate -s 8G "$work/plain.img"
plain=$(losetup --direct-io=on -f --show "$work/plain.img")
# On a kernel dm-thin device mkfs.ext4 finds the pool's block size as the
# minimum and optimal I/O size and aligns ext4's allocations to it (stride,
# stripe width: 64 KiB / 4 KiB); a loop device cannot carry those hints, so
# the thin device gets them here, as a kernel pool would give them. Whole
# blocks written after a snapshot then need no copy of the old block.
stripe=(-E stride=16,stripe_width=16)
for kind in thin plain; do
  dev=$thin opts=("${stripe[@]}")
  [ $kind = plain ] && dev=$plain opts=()
  mkfs.ext4 -q -F "${opts[@]}" "$dev"
  mkdir "$work/mnt-$kind"
  mount "$dev" "$work/mnt-$kind"
done

for i in $(seq "$RUNS"); do
  for kind in thin plain; do
    m=$work/mnt-$kind
    rm -rf "$m/big" "$m/untar"; drop
    timed "$kind.write" dd if=/dev/zero of="$m/big" bs=1M count=1024 conv=fsync
    drop
    timed "$kind.read" dd if="$m/big" of=/dev/null bs=1M iflag=direct
    mkdir "$m/untar"; drop
    timed "$kind.untar" sh -c "tar -C '$m/untar' -xf '$work/small.tar' && sync -f '$m/untar'"
  done
done

# copy-on-write: the same in-place overwrite of the thin device's 1 GiB
# file, before and after a snapshot of the device shares every block
m=$work/mnt-thin
for i in $(seq "$RUNS"); do
  drop
  timed overwrite dd if=/dev/zero of="$m/big" bs=1M count=1024 conv=notrunc,fsync oflag=direct
  "${T[@]}" snap $((i + 10)) 0 >/dev/null # freezes the file system, snapshots, thaws
  drop
  timed cow dd if=/dev/zero of="$m/big" bs=1M count=1024 conv=notrunc,fsync oflag=direct
  "${T[@]}" delete $((i + 10)) >/dev/null
done

printf 'thin pool (64 KiB blocks) vs plain loop file, ext4 on both, %d runs, %s\n' "$RUNS" "$(uname -r)"
printf 'snapshot (create_snap + commit): %.2f ms at 1 GiB mapped, %.2f ms at 100 GiB (ratio %.2f)\n' \
  "$snap1" "$snap100" "$(echo "$snap100 / $snap1" | bc -l)"
printf '%-10s %12s %12s %8s   %s\n' op thin plain ratio 'target (plain time / thin time)'
for op in write read untar; do
  t=$(median "thin.$op"); p=$(median "plain.$op"); r=$(echo "$p / $t" | bc -l)
  printf '%-10s %9.1f ms %9.1f ms %7.2fx   >= 0.8x %s\n' "$op" "$t" "$p" "$r" "$( (($(echo "$r >= 0.8" | bc))) && echo ok || echo MISSED)"
done
o=$(median overwrite); c=$(median cow); r=$(echo "$o / $c" | bc -l)
printf '%-10s %9.1f ms %9.1f ms %7.2fx   >= 0.7x %s (overwrite before the snapshot / after it)\n' cow "$c" "$o" "$r" \
  "$( (($(echo "$r >= 0.7" | bc))) && echo ok || echo MISSED)"
for s in "$snap1" "$snap100"; do
  printf 'target: snapshot < 5 ms: %.2f ms %s\n' "$s" "$( (($(echo "$s < 5" | bc))) && echo ok || echo MISSED)"
done
