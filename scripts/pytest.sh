#!/usr/bin/env bash
# Run the whole suite (all markers: slow, swarm, browser included). pytest's exit status 5
# ("no tests collected") is a failure here: a suite that ran nothing proves nothing.
#
# In two parts (tests/conftest.py chooses the files of each, SWARMLESS_TEST_PART):
#   1. the files that do not use the Swarm test cluster, on 2 pytest-xdist workers, a file
#      to a worker: much of the suite waits on the engine, not on the CPU;
#   2. the files that use the cluster, in one process, alone on the machine: its nodes
#      have fixed names, and its tests kill and cut off nodes on a deadline.
# SWARMLESS_TEST_WORKERS=0 runs everything in one process, in one part.
set -uo pipefail
cd "$(dirname "$0")/.."
workers="${SWARMLESS_TEST_WORKERS:-2}"

run() {
  # Short tracebacks: CI shows only a part of the output, and every failure should fit in it.
  .venv/bin/python -m pytest --tb=short --durations=25 "$@"
}

if [ "$workers" = 0 ]; then
  run "$@"
  rc=$?
else
  echo "== part 1 of 2: the tests on the engine alone, on $workers workers"
  SWARMLESS_TEST_PART=engine run -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
  engine=$?
  case "$engine" in 0 | 1 | 5) ;; *) exit "$engine" ;; esac  # interrupted, or a usage error
  echo "== part 2 of 2: the tests on the Swarm test cluster, in one process"
  SWARMLESS_TEST_PART=cluster run "$@"
  cluster=$?
  if [ "$engine" = 5 ] && [ "$cluster" = 5 ]; then
    rc=5
  elif [ "$engine" != 0 ] && [ "$engine" != 5 ]; then
    rc=$engine
  elif [ "$cluster" = 5 ]; then
    rc=0  # every test selected was in part 1
  else
    rc=$cluster
  fi
fi
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
