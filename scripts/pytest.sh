#!/usr/bin/env bash
# Run the whole suite (all markers: slow, swarm, browser included). pytest's exit status 5
# ("no tests collected") is a failure here: a suite that ran nothing proves nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
# Short tracebacks: CI shows only a part of the output, and every failure should fit in it.
.venv/bin/python -m pytest --tb=short --durations=25 "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
