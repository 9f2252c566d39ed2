#!/usr/bin/env bash
# devicemapper.sh ARCHIVE [N]: strata's devicemapper driver (its own thin
# pool) against its overlay driver, on one directory of /var/tmp (see
# drivers.sh); targets: create under 20 ms, load at most 2x overlay's.
DRIVERS="devicemapper overlay" exec "$(dirname "$0")/drivers.sh" "$@"
