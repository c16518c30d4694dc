#!/usr/bin/env bash
# Build the gateway's image (swarmless/gateway:latest) on an engine that cannot pull:
# FROM the local Python base (scripts/base-images.sh), with swarmless and its dependencies
# installed by this machine's pip (pip install --target) and copied in, so the build itself
# needs no network. On an engine that can pull, examples/gateway/Dockerfile does the same
# from python:3.11-slim.
#
#   scripts/gateway-image.sh [TAG]      prints the tag it built (or found: idempotent per source)
#
# The tag's image carries swarmless.source=<hash of pyproject.toml and src/>: a changed
# source builds anew. Load it onto the Swarm nodes that run the gateway:
#   docker save TAG | docker -H tcp://NODE:2375 load
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAG=${1:-swarmless/gateway:latest}
BASE=${SWARMLESS_BASE_IMAGE:-swarmless/python:bookworm}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3

say() { printf 'gateway-image: %s\n' "$*" >&2; }

source_hash=$(cd "$ROOT" && find pyproject.toml src -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*' \
  -not -name '*.pyc' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "swarmless.source"}}' "$TAG" 2>/dev/null)" = "$source_hash" ]; then
  say "$TAG is up to date"
  echo "$TAG"
  exit 0
fi
docker image inspect "$BASE" >/dev/null 2>&1 || bash "$ROOT/scripts/base-images.sh"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
say "installing swarmless[postgres] into the build context"
if ! "$PY" -m pip install --quiet --disable-pip-version-check --no-compile \
  --target "$ctx/site" "$ROOT[postgres]" >"$ctx/pip.log" 2>&1; then
  cat "$ctx/pip.log" >&2
  exit 1
fi
rm -rf "$ctx/site/bin"
cat >"$ctx/Dockerfile" <<EOF
FROM $BASE
COPY site /opt/swarmless-gateway
ENV PYTHONPATH=/opt/swarmless-gateway PYTHONUNBUFFERED=1 \\
    SWARMLESS_HOST=0.0.0.0 SWARMLESS_DATA_DIR=/data
LABEL swarmless.source=$source_hash swarmless.managed=true swarmless.kind=gateway-image
EXPOSE 8080
CMD ["python3", "-m", "swarmless", "up"]
EOF
say "building $TAG FROM $BASE"
DOCKER_BUILDKIT=0 docker build -q -t "$TAG" "$ctx" >/dev/null 2>"$ctx/build.log" \
  || { cat "$ctx/build.log" >&2; exit 1; }
echo "$TAG"
