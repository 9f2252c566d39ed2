#!/usr/bin/env bash
# containers.sh ARCHIVE [N]: container file-system operations of strata (overlay
# driver) against a private dockerd (overlay2) on this machine, in one run, on
# the first image of a docker save archive:
#   create, rm   per container, over N containers each (default 20), alternating
#   diff, commit, export   of one container holding ~1,000 changes (500 files of
#                the image rewritten, 500 added: one `docker cp` tar for Docker,
#                the same tar extracted into `strata mount` for strata), RUNS
#                times each (default 5), alternating, warm cache
# Every command is timed from the shell, CLI start included. A commit is timed
# until its layer is on disk (a `sync` after it, for both): strata syncs before
# it records a layer, Docker does not. Prints the medians, the ratios and the
# issue's targets.
set -euo pipefail
ARCHIVE=$(realpath "${1:?usage: containers.sh ARCHIVE [N]}")
N=${2:-20}
RUNS=${RUNS:-5}
cd "$(dirname "$0")/.."
work=$(mktemp -d /var/tmp/strata-bench.XXXXXX)
STRATA=${STRATA:-$work/strata-bin}
[ -x "$STRATA" ] || CGO_ENABLED=0 go build -o "$STRATA" ./cmd/strata
DOCKER=/usr/bin/docker; [ -x $DOCKER ] || DOCKER=$(command -v docker)
sock=$work/docker.sock
dockerd --data-root "$work/docker" --exec-root "$work/exec" --pidfile "$work/docker.pid" \
  --host "unix://$sock" --storage-driver overlay2 --bridge none --iptables=false --ip-masq=false \
  >"$work/dockerd.log" 2>&1 &
dpid=$!
cleanup() {
  set +e # a grep that finds no mount left must not stop the cleanup
  kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
  grep -o " $work/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
D=("$DOCKER" -H "unix://$sock")
S=("$STRATA" --root "$work/strata" --storage-driver overlay)
for i in $(seq 60); do "${D[@]}" info >/dev/null 2>&1 && break; sleep 1; done

now() { date +%s.%N; }
# timed FILE CMD...: runs CMD with its output in $out and appends its wall
# time in milliseconds to FILE.
out=$work/out
timed() {
  local f=$1 t0 t1; shift
  t0=$(now); "$@" >"$out"; t1=$(now)
  echo "($t1 - $t0) * 1000" | bc >>"$work/$f"
}
# durable CMD...: CMD, then a sync, so that what it wrote is on disk.
durable() { "$@"; sync; }
median() { sort -g "$work/$1" | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

image=$("${D[@]}" load -i "$ARCHIVE" | sed -n 's/^Loaded image: //p' | head -1)
[ -n "$image" ] || { echo "no tagged image in $ARCHIVE" >&2; exit 1; }
"${S[@]}" load -q -i "$ARCHIVE" >/dev/null

# create: N containers each, one at a time, alternating
for i in $(seq "$N"); do
  timed docker.create "${D[@]}" create "$image"; cat "$out" >>"$work/docker.ids"
  timed strata.create "${S[@]}" create "$image"; cat "$out" >>"$work/strata.ids"
done

# ~1,000 changes as one tar: 500 small files of the image rewritten, 500 added
dc=$("${D[@]}" create "$image"); sc=$("${S[@]}" create "$image")
mnt=$("${S[@]}" mount "$sc")
(cd "$mnt" && find . -xdev -type f -size -8k | grep -E '^[[:alnum:]./_-]+$' | awk 'NR <= 500') >"$work/changes.list"
stage=$work/stage
while read -r f; do mkdir -p "$stage/$(dirname "$f")"; echo "rewritten $f" >"$stage/$f"; done <"$work/changes.list"
for i in $(seq 500); do
  d=bench-added/d$((i % 20)); mkdir -p "$stage/$d"; echo "added $i" >"$stage/$d/f$i.txt"
done
(cd "$stage" && find ./bench-added) >>"$work/changes.list"
tar -C "$stage" -cf "$work/changes.tar" --no-recursion -T "$work/changes.list"
"${D[@]}" cp - "$dc:/" <"$work/changes.tar"
tar -C "$mnt" -xf "$work/changes.tar"
"${S[@]}" umount "$sc"

for op in diff commit export; do
  [ $op = export ] && out=/dev/null
  for i in $(seq 0 "$RUNS"); do # run 0 warms the cache and is not counted
    f=.$op; [ "$i" = 0 ] && f=.warmup
    case $op in
      diff)   timed docker$f "${D[@]}" diff "$dc"; dn=$(wc -l <"$out")
              timed strata$f "${S[@]}" diff "$sc"; sn=$(wc -l <"$out") ;;
      commit) # a new file each run, so that every commit makes a new layer
              # (committing unchanged content again only finds the layer there)
              echo "run $i" >"$work/run"; "${D[@]}" cp "$work/run" "$dc:/bench-run"
              "${S[@]}" cp "$work/run" "$sc:/bench-run"; sync
              timed docker$f durable "${D[@]}" commit "$dc" "bench-commit:$i"
              timed strata$f durable "${S[@]}" commit "$sc" "bench-commit:$i" ;;
      export) timed docker$f "${D[@]}" export "$dc"
              timed strata$f "${S[@]}" export "$sc" ;;
    esac
  done
done
exported=$("${S[@]}" export "$sc" | wc -c)

# rm: the N containers of the create phase, alternating
paste "$work/docker.ids" "$work/strata.ids" | while read -r did sid; do
  timed docker.rm "${D[@]}" rm "$did"
  timed strata.rm "${S[@]}" rm "$sid"
done

printf 'image %s (%s), %d containers for create/rm, %d runs for diff/commit/export\n' \
  "$image" "$(basename "$ARCHIVE")" "$N" "$RUNS"
printf 'diff: %d changes listed by docker, %d by strata; export: %d MB\n' "$dn" "$sn" $((exported / 1000000))
printf '%-8s %12s %12s %10s   %s\n' op docker strata ratio target
# row OP KIND TARGET: KIND "faster" prints docker/strata (higher is better),
# "share" prints strata/docker (lower is better).
row() {
  local d s r ok
  d=$(median "docker.$1"); s=$(median "strata.$1")
  if [ "$2" = faster ]; then
    r=$(echo "$d / $s" | bc -l); ok=$(echo "$r >= $3" | bc)
    printf '%-8s %9.1f ms %9.1f ms %9.1fx   faster, target >= %sx %s\n' "$1" "$d" "$s" "$r" "$3" "$( ((ok)) && echo ok || echo MISSED)"
  else
    r=$(echo "$s / $d" | bc -l); ok=$(echo "$r <= $3" | bc)
    printf '%-8s %9.1f ms %9.1f ms %9.2fx   of docker, target <= %sx %s\n' "$1" "$d" "$s" "$r" "$3" "$( ((ok)) && echo ok || echo MISSED)"
  fi
}
row create faster 20
row diff share 0.2
row commit share 0.5
row export share 0.7
row rm faster 10
