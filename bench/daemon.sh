#!/usr/bin/env bash
# daemon.sh [DIR] [N]: the docker CLI against `strata daemon` (overlay) and
# against a private dockerd (overlay2) on this machine, in one run, each on
# its own temporary socket; DIR holds base.tar and app.tar (default
# /var/tmp/strata-images):
#   create   `docker create base:1`, N times each (default 20), alternating;
#            `docker version` against strata too, the floor the CLI's own
#            start sets
#   api      create and rm of base:1 through the Engine API with the moby Go
#            client (bench/apitime), N each, alternating: the storage
#            engines without the CLI's start
#   load     `docker load -i app.tar`, RUNS times each (default 3), alternating,
#            after an rmi of app:1, a sync and a dropped page cache; timed
#            until the layers are on disk (a sync after it, for both)
# Every command is timed from the shell, CLI start included, with the same
# CLI for both ($DOCKER, default Debian's, which matches its dockerd).
# Prints the medians, the ratios and the issue's targets.
set -euo pipefail
DIR=$(realpath "${1:-/var/tmp/strata-images}")
N=${2:-20}
RUNS=${RUNS:-3}
cd "$(dirname "$0")/.."
work=$(mktemp -d /var/tmp/strata-bench.XXXXXX)
STRATA=${STRATA:-$work/strata-bin}
[ -x "$STRATA" ] || go build -o "$STRATA" ./cmd/strata
go build -o "$work/apitime" ./bench/apitime
DOCKER=${DOCKER:-/usr/bin/docker}; [ -x "$DOCKER" ] || DOCKER=$(command -v docker)
dsock=$work/docker.sock
ssock=$work/strata.sock
dockerd --data-root "$work/docker" --exec-root "$work/exec" --pidfile "$work/docker.pid" \
  --host "unix://$dsock" --storage-driver overlay2 --bridge none --iptables=false --ip-masq=false \
  >"$work/dockerd.log" 2>&1 &
dpid=$!
"$STRATA" --root "$work/strata" --storage-driver overlay daemon --host "unix://$ssock" >"$work/strata.log" 2>&1 &
spid=$!
cleanup() {
  set +e # a grep that finds no mount left must not stop the cleanup
  kill $dpid $spid 2>/dev/null; wait $dpid $spid 2>/dev/null
  grep -o " $work/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
D=("$DOCKER" -H "unix://$dsock")
S=("$DOCKER" -H "unix://$ssock")
for i in $(seq 60); do "${D[@]}" info >/dev/null 2>&1 && "${S[@]}" version >/dev/null 2>&1 && break; sleep 1; done
"${S[@]}" version >/dev/null || { echo "strata daemon not answering:" >&2; cat "$work/strata.log" >&2; exit 1; }

now() { date +%s.%N; }
# timed FILE CMD...: runs CMD, its output discarded, and appends its wall
# time in milliseconds to FILE.
timed() {
  local f=$1 t0 t1; shift
  t0=$(now); "$@" >/dev/null; t1=$(now)
  echo "($t1 - $t0) * 1000" | bc >>"$work/$f"
}
# durable CMD...: CMD, then a sync, so that what it wrote is on disk.
durable() { "$@"; sync; }
# drop: write back and drop the page cache, then let the discards of the
# last removal settle, so that no run pays for the one before it.
drop() { sync; fstrim / 2>/dev/null || true; sleep 3; echo 3 >/proc/sys/vm/drop_caches; }
median() { sort -g "$work/$1" | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

"${D[@]}" load -q -i "$DIR/base.tar" >/dev/null
"${S[@]}" load -q -i "$DIR/base.tar" >/dev/null

# create: one at a time, alternating; a first untimed one each warms up
"${D[@]}" create base:1 >/dev/null; "${S[@]}" create base:1 >/dev/null
for i in $(seq "$N"); do
  timed docker.create "${D[@]}" create base:1
  timed strata.create "${S[@]}" create base:1
  timed strata.version "${S[@]}" version
done

"$work/apitime" -docker "$dsock" -strata "$ssock" -image base:1 -n "$N" >"$work/api"

# load: each run starts without app:1 and with a cold cache
for i in $(seq "$RUNS"); do
  for side in docker strata; do
    [ $side = docker ] && C=("${D[@]}") || C=("${S[@]}")
    "${C[@]}" rmi -f app:1 >/dev/null 2>&1 || true
    drop
    timed $side.load durable "${C[@]}" load -i "$DIR/app.tar"
  done
  echo "load run $i: docker $(tail -1 "$work/docker.load") ms, strata $(tail -1 "$work/strata.load") ms" >&2
done

printf 'docker CLI %s; %d creates of base:1, %d loads of app.tar (%d MB) each\n' \
  "$("$DOCKER" version -f '{{.Client.Version}}' 2>/dev/null)" "$N" "$RUNS" $(($(stat -c %s "$DIR/app.tar") / 1000000))
printf '%-8s %12s %12s %10s   %s\n' op dockerd strata ratio target
d=$(median docker.create); s=$(median strata.create); r=$(echo "$d / $s" | bc -l)
printf '%-8s %9.1f ms %9.1f ms %9.1fx   faster, target >= 5x %s\n' create "$d" "$s" "$r" "$( (($(echo "$r >= 5" | bc))) && echo ok || echo MISSED)"
f=$(median strata.version)
if (($(echo "$s > $f" | bc))); then
  printf '(the CLI alone, `docker version` against strata: %.1f ms; create less that: %.1fx faster)\n' "$f" \
    "$(echo "($d - $f) / ($s - $f)" | bc -l)"
fi
# api-create and api-rm against issue 3's targets for create and rm
awk '$1 ~ /^api-/ {
  t = ($1 == "api-create") ? 20 : 10
  printf "%-10s %9.2f ms %9.2f ms %9.1fx   faster, target >= %dx %s\n", $1, $2, $4, $6, t, ($6 + 0 >= t) ? "ok" : "MISSED"
}' "$work/api"
d=$(median docker.load); s=$(median strata.load); r=$(echo "$s / $d" | bc -l)
printf '%-8s %9.1f ms %9.1f ms %9.2fx   of dockerd, target <= 0.4x %s\n' load "$d" "$s" "$r" "$( (($(echo "$r <= 0.4" | bc))) && echo ok || echo MISSED)"
