#!/usr/bin/env bash
# btrfs.sh ARCHIVE [N]: strata's btrfs driver against its overlay and vfs
# drivers, all on one btrfs made here (see drivers.sh); target: btrfs create
# under 10 ms.
DRIVERS="btrfs overlay vfs" FS=btrfs exec "$(dirname "$0")/drivers.sh" "$@"
