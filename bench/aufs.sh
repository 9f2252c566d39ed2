#!/usr/bin/env bash
# aufs.sh ARCHIVE: strata's union file system (the aufs driver over FUSE)
# against kernel overlayfs (strata's overlay driver) and Debian's
# fuse-overlayfs, in one run, on the same layers: a container of the first
# image of ARCHIVE (a docker save archive with ~20k small files and a
# ~100 MB file, such as app.tar) and a container of a one-layer image
# holding a 1 GiB file. fuse-overlayfs mounts the overlay store's layer
# directories (whiteouts as overlay spells them) with an upper dir of its own.
# RUNS times each (default 3), alternating, medians:
#   read      sequential read of the 1 GiB lower file, cold cache
#   find      find + stat of every file of the image container, cold cache
#   untar     extraction of 20,000 small files into the union, then sync
#   copyup    first write (an O_APPEND open) to the ~100 MB lower file, then
#             sync: the copy-up; a fresh container each time, COPYUPS times a
#             run (default 3: it is short, and the disk makes it noisy)
# Prints ratios aufs / other (times: below 1, aufs is faster) against the
# issue's targets: read <= 1.25x overlay (0.8x its speed), find <= 3x
# overlay, untar and copyup <= 1x fuse-overlayfs.
# BASELINE=<strata binary> adds its aufs, on the same layers, alternating
# with the others: an A/B of two builds in one run, on a busy machine.
set -euo pipefail
ARCHIVE=$(realpath "${1:?usage: aufs.sh ARCHIVE}")
RUNS=${RUNS:-3}
COPYUPS=${COPYUPS:-3}
command -v fuse-overlayfs >/dev/null || { echo "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)" >&2; exit 1; }
cd "$(dirname "$0")/.."
work=$(mktemp -d /var/tmp/strata-bench-aufs.XXXXXX)
STRATA=${STRATA:-$work/strata-bin}
[ -x "$STRATA" ] || CGO_ENABLED=0 go build -o "$STRATA" ./cmd/strata
BASELINE=${BASELINE:+$(realpath "$BASELINE")}
cleanup() {
  set +e
  grep -o " $work/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  rm -rf "$work"
}
trap cleanup EXIT

S() { local d=$1; shift; "$STRATA" --root "$work/$d" --storage-driver "$d" "$@"; }
B() { "$BASELINE" --root "$work/aufs" --storage-driver aufs "$@"; }
now() { date +%s.%N; }
timed() { # timed FILE CMD...: appends CMD's wall time in ms to FILE
  local f=$1 t0 t1; shift
  t0=$(now); "$@" >/dev/null; t1=$(now)
  echo "($t1 - $t0) * 1000" | bc >>"$work/$f"
}
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
median() { sort -g "$work/$1" | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
synced() { "$@"; sync; }
append() { : >>"$1"; }

# The layers: the archive's image, and a 1 GiB file in an image of its own.
mkdir -p "$work/big"
head -c 1G /dev/urandom >"$work/big/big"
tar -C "$work/big" -cf "$work/big.tar" big
rm -rf "$work/big"
python3 - "$work/small.tar" <<'EOF'
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w") as tar:
    for d in range(100):
        info = tarfile.TarInfo(f"d{d:03}"); info.type = tarfile.DIRTYPE; info.mode = 0o755
        tar.addfile(info)
        for f in range(200):
            body = (f"file {d} {f}\n" * 20).encode()
            info = tarfile.TarInfo(f"d{d:03}/f{f:03}"); info.size = len(body); info.mode = 0o644
            tar.addfile(info, io.BytesIO(body))
EOF
image=""
for d in overlay aufs; do
  image=$(S "$d" load -i "$ARCHIVE" | sed -n 's/^Loaded image: //p' | head -1)
  S "$d" import "$work/big.tar" big:1 >/dev/null
done
[ -n "$image" ] || { echo "no tagged image in $ARCHIVE" >&2; exit 1; }

# mountpoint KIND IMAGE: a fresh container of IMAGE mounted by KIND
# (overlay, aufs, baseline: aufs served by BASELINE, or fuse-overlayfs on
# the overlay store's layers).
mountpoint() {
  local kind=$1 c lower fo
  if [ "$kind" = baseline ]; then
    c=$(B create "$2"); B mount "$c"; return
  fi
  if [ "$kind" != fuse-overlayfs ]; then
    c=$(S "$kind" create "$2"); S "$kind" mount "$c"; return
  fi
  c=$(S overlay create "$2")
  lower=$(S overlay container inspect "$c" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["GraphDriver"]["Data"]["LowerDir"])')
  fo=$(mktemp -d "$work/fo.XXXXXX")
  mkdir "$fo/upper" "$fo/work" "$fo/mnt"
  fuse-overlayfs -o "lowerdir=$lower,upperdir=$fo/upper,workdir=$fo/work" "$fo/mnt" 2>/dev/null
  echo "$fo/mnt"
}

KINDS=(overlay aufs fuse-overlayfs)
[ -z "$BASELINE" ] || KINDS+=(baseline)
declare -A app bigm
for k in "${KINDS[@]}"; do
  app[$k]=$(mountpoint "$k" "$image")
  bigm[$k]=$(mountpoint "$k" big:1)
done
bigfile=$(cd "${app[overlay]}" && find . -xdev -type f -size +90M | head -1)
[ -n "$bigfile" ] || { echo "no file over 90 MB in $image" >&2; exit 1; }

for i in $(seq "$RUNS"); do
  for k in "${KINDS[@]}"; do
    drop; timed "$k.read" dd if="${bigm[$k]}/big" of=/dev/null bs=1M status=none
    drop; timed "$k.find" find "${app[$k]}" -xdev -printf '%s %m %u\n'
    mkdir "${app[$k]}/untar$i"
    timed "$k.untar" synced tar -C "${app[$k]}/untar$i" -xf "$work/small.tar"
    for j in $(seq "$COPYUPS"); do
      m=$(mountpoint "$k" "$image")
      drop; timed "$k.copyup" synced append "$m/$bigfile"
    done
  done
done

printf '%-8s %12s %12s %16s %12s %12s\n' op overlay/ms aufs/ms fuse-overlayfs/ms aufs/overlay aufs/fuse-ovl
for op in read find untar copyup; do
  o=$(median overlay.$op) a=$(median aufs.$op) f=$(median fuse-overlayfs.$op)
  printf '%-8s %12.0f %12.0f %16.0f %12.2f %12.2f\n' "$op" "$o" "$a" "$f" "$(echo "$a / $o" | bc -l)" "$(echo "$a / $f" | bc -l)"
done
echo "targets: read aufs/overlay <= 1.25; find aufs/overlay <= 3; untar, copyup aufs/fuse-ovl <= 1"
if [ -n "$BASELINE" ]; then
  printf '%-8s %12s %12s %16s %12s\n' op baseline/ms aufs/ms base/fuse-ovl aufs/baseline
  for op in read find untar copyup; do
    b=$(median baseline.$op) a=$(median aufs.$op) f=$(median fuse-overlayfs.$op)
    printf '%-8s %12.0f %12.0f %16.2f %12.2f\n' "$op" "$b" "$a" "$(echo "$b / $f" | bc -l)" "$(echo "$a / $b" | bc -l)"
  done
fi
S aufs info | grep -E 'Mount Mode|Passthrough'
