#!/usr/bin/env bash
# test.sh: runs every test, as `make test` and CI do, and fails when a test
# skipped: CI runs as root on a machine with every kernel feature and tool
# the tests need, so a skip there means a test that did not run.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
go test -count=1 -timeout 80m -v ./... >"$log" 2>&1
status=$?
if [ $status -ne 0 ]; then
  grep -Ev '^\s*(=== (RUN|PAUSE|CONT)|--- PASS)' "$log"
  exit $status
fi
grep -E '^(ok|FAIL|\?)\s' "$log"
if grep -q -- '--- SKIP' "$log"; then
  grep -E -A2 -- '--- SKIP' "$log"
  echo "test.sh: tests skipped (above): CI must run them all" >&2
  exit 1
fi
