#!/usr/bin/env bash
# The self-scaling database on the local engine (details: README.md, cli.py):
#
#   examples/self-scaling-db/run.sh up [--replicas N] [--port 8080]   # Ctrl-C removes it all
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${SWARMLESS_PYTHON:-$here/../../.venv/bin/python}
if [ ! -x "$py" ]; then
  echo "run.sh: no Python environment at $py; run 'make setup' first" >&2
  exit 1
fi
exec "$py" "$here/cli.py" "$@"
