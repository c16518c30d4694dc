#!/usr/bin/env bash
# The serverless voting app on the local engine (details: README.md, cli.py):
#
#   examples/voting-app/run.sh up [--mode warm|cgi] [--record spawn|docker] [--style 2016]
#   examples/voting-app/run.sh deploy --mode cgi      # switch the running app
#   examples/voting-app/run.sh status
#   examples/voting-app/run.sh down [--keep-images]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${SWARMLESS_PYTHON:-$here/../../.venv/bin/python}
if [ ! -x "$py" ]; then
  echo "run.sh: no Python environment at $py; run 'make setup' first" >&2
  exit 1
fi
exec "$py" "$here/cli.py" "$@"
