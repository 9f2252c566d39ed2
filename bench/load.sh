#!/usr/bin/env bash
# load.sh ARCHIVE [RUNS]: loads the same docker save archive with strata
# (overlay driver) and with `docker load` (a private dockerd, overlay2) on this
# machine, RUNS times each (default 5), alternating, with the page cache
# dropped and the stores emptied (and the disk settled) before every run. Prints the median of each,
# the ratio strata/docker and strata's peak memory (max RSS).
set -euo pipefail
ARCHIVE=$(realpath "${1:?usage: load.sh ARCHIVE [RUNS]}")
RUNS=${2:-5}
cd "$(dirname "$0")/.."
STRATA=${STRATA:-$PWD/bin/strata}
[ -x "$STRATA" ] || CGO_ENABLED=0 go build -o "$STRATA" ./cmd/strata
DOCKER=/usr/bin/docker; [ -x $DOCKER ] || DOCKER=docker
work=$(mktemp -d /var/tmp/strata-bench.XXXXXX)
sock=$work/docker.sock
dockerd --data-root "$work/docker" --exec-root "$work/exec" --pidfile "$work/docker.pid" \
  --host "unix://$sock" --storage-driver overlay2 --bridge none --iptables=false --ip-masq=false \
  >"$work/dockerd.log" 2>&1 &
dpid=$!
cleanup() {
  set +e # a step that finds nothing to do must not stop the cleanup
  kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
  grep -o " $work/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for i in $(seq 60); do $DOCKER -H "unix://$sock" info >/dev/null 2>&1 && break; sleep 1; done

now() { date +%s.%N; }
# drop: write back and drop the page cache, then let the discards of the last
# removal settle, so that no run pays for the one before it.
drop() { sync; fstrim / 2>/dev/null || true; sleep 3; echo 3 > /proc/sys/vm/drop_caches; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
: >"$work/strata.times"; : >"$work/docker.times"; : >"$work/strata.rss"
for i in $(seq "$RUNS"); do
  $DOCKER -H "unix://$sock" image prune -af >/dev/null; drop
  t0=$(now); $DOCKER -H "unix://$sock" load -q -i "$ARCHIVE" >/dev/null; sync; t1=$(now)
  echo "$t1 - $t0" | bc >>"$work/docker.times"

  umount -R "$work/strata" 2>/dev/null || true; rm -rf "$work/strata"; drop
  t0=$(now)
  /usr/bin/time -f %M -o "$work/rss" "$STRATA" --root "$work/strata" --storage-driver overlay load -q -i "$ARCHIVE" >/dev/null
  sync; t1=$(now)
  echo "$t1 - $t0" | bc >>"$work/strata.times"; cat "$work/rss" >>"$work/strata.rss"
  echo "run $i: docker $(tail -1 "$work/docker.times")s strata $(tail -1 "$work/strata.times")s" >&2
done
d=$(median <"$work/docker.times"); s=$(median <"$work/strata.times"); rss=$(sort -n "$work/strata.rss" | tail -1)
printf 'archive %s (%s MB), %d runs each, cold cache\n' "$(basename "$ARCHIVE")" "$(( $(stat -c %s "$ARCHIVE") / 1000000 ))" "$RUNS"
printf 'docker load (overlay2): median %.2fs\n' "$d"
printf 'strata load (overlay):  median %.2fs\n' "$s"
printf 'ratio strata/docker: %.2fx (target <= 0.35x)\n' "$(echo "$s / $d" | bc -l)"
printf 'strata peak RSS: %d MB (target < 150 MB)\n' "$(( rss / 1024 ))"
