#!/usr/bin/env bash
# Build the base images swarmless and its tests need, locally, when they are absent.
#
#   swarmless/busybox:latest   FROM scratch + a static busybox (a few MB)
#   swarmless/python:bookworm  Debian bookworm minbase + python3, pip, venv and the CA
#                              certificates (debootstrap + docker import), so that a
#                              function's requirements.txt installs at build time
#   swarmless/node:bookworm    \  FROM the Python base + Debian's nodejs / golang packages;
#   swarmless/golang:bookworm  /  built on first use by `swarmless build` (or here: node, go)
#
# Idempotent: an image that is already present and built from today's recipe is skipped.
# The Python image carries its recipe's hash (label swarmless.recipe): one built from an
# older recipe (without pip, say) is built again. An image of that name that this script
# did not build (no label swarmless.base) is left alone. Set SWARMLESS_BASE_IMAGE_PULL=1 to
# try `docker pull` of an upstream image first (for engines that can reach a registry).
set -euo pipefail

BUSYBOX_IMAGE=${SWARMLESS_BUSYBOX_IMAGE:-swarmless/busybox:latest}
PYTHON_IMAGE=${SWARMLESS_BASE_IMAGE:-swarmless/python:bookworm}
SUITE=${SWARMLESS_DEBIAN_SUITE:-bookworm}
MIRROR=${SWARMLESS_DEBIAN_MIRROR:-http://deb.debian.org/debian}

#: What goes into the Python image; any change here (or to the import options below) makes
#: a new recipe hash, and the image is built again.
PYTHON_PACKAGES=python3,python3-pip,python3-venv,ca-certificates
PYTHON_IMPORT=(
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  -c 'ENV LANG=C.UTF-8' -c 'ENV PYTHONUNBUFFERED=1' -c 'CMD ["python3"]'
)

say() { printf 'base-images: %s\n' "$*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
label() { docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }
python_recipe() {
  printf '%s\n' "suite=$SUITE" "packages=$PYTHON_PACKAGES" "${PYTHON_IMPORT[@]}" \
    | sha256sum | cut -c1-12
}

need_root_pkg() {  # need_root_pkg CMD PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing $2"
    apt-get install -y -q "$2" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; }
  else
    say "need '$1' (Debian package $2); install it as root, or pull/tag an image as $3"
    exit 1
  fi
}

build_busybox() {
  if have "$BUSYBOX_IMAGE"; then say "$BUSYBOX_IMAGE present"; return; fi
  if [ "${SWARMLESS_BASE_IMAGE_PULL:-0}" = 1 ] && docker pull -q busybox:stable >/dev/null 2>&1; then
    docker tag busybox:stable "$BUSYBOX_IMAGE"; say "$BUSYBOX_IMAGE tagged from busybox:stable"; return
  fi
  # FROM scratch needs a static busybox (Debian's busybox-static); ldd fails on one.
  local bb
  bb=$(command -v busybox || true)
  if [ -z "$bb" ] || ldd "$bb" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing busybox-static"
      apt-get install -y -q busybox-static >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q busybox-static >/dev/null; }
    fi
    bb=/bin/busybox
    if [ ! -x "$bb" ] || ldd "$bb" >/dev/null 2>&1; then
      say "need a static busybox (Debian package busybox-static), or pull/tag an image as $BUSYBOX_IMAGE"
      exit 1
    fi
  fi
  local ctx
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  cp "$bb" "$ctx/busybox"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
CMD ["/bin/sh"]
DOCKERFILE
  say "building $BUSYBOX_IMAGE"
  docker build -q --label swarmless.base=busybox -t "$BUSYBOX_IMAGE" "$ctx" >"$ctx/build.log" 2>&1 \
    || { cat "$ctx/build.log" >&2; exit 1; }
}

build_python() {
  local recipe base
  recipe=$(python_recipe)
  if have "$PYTHON_IMAGE"; then
    base=$(label "$PYTHON_IMAGE" swarmless.base)
    if [ -z "$base" ] || [ "$base" = "<no value>" ]; then
      say "$PYTHON_IMAGE present (not built here: left as it is)"; return
    fi
    if [ "$(label "$PYTHON_IMAGE" swarmless.recipe)" = "$recipe" ]; then
      say "$PYTHON_IMAGE present"; return
    fi
    say "$PYTHON_IMAGE was built from an older recipe (before pip and venv): building it again"
  fi
  if [ "${SWARMLESS_BASE_IMAGE_PULL:-0}" = 1 ] && docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    printf 'FROM python:3.11-slim-bookworm\nLABEL swarmless.base=python swarmless.recipe=%s\n' "$recipe" \
      | docker build -q -t "$PYTHON_IMAGE" - >/dev/null
    say "$PYTHON_IMAGE built from python:3.11-slim-bookworm"; return
  fi
  need_root_pkg debootstrap debootstrap "$PYTHON_IMAGE"
  local root
  root=$(mktemp -d /var/tmp/swarmless-rootfs.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  say "debootstrap $SUITE into $root (about a minute)"
  debootstrap --variant=minbase --include="$PYTHON_PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { say "debootstrap failed; see $root.log"; exit 1; }
  rm -f "$root.log"
  # Slim the tree: apt lists, caches, docs and man pages are not needed at run time (a
  # derived image that installs packages runs apt-get update first).
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
         "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*
  find "$root"/usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
  say "importing $PYTHON_IMAGE"
  tar -C "$root" -c . | docker import "${PYTHON_IMPORT[@]}" \
    -c "LABEL swarmless.base=python swarmless.recipe=$recipe" \
    - "$PYTHON_IMAGE" >/dev/null
}

# Node.js and Go: Debian's packages on top of the Python base (swarmless.baseimages holds
# their recipes, shared with `swarmless build`, which builds them on first use).
build_lang() {
  local py=${PYTHON:-}
  if [ -z "$py" ]; then
    py=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python
    [ -x "$py" ] || py=python3
  fi
  "$py" -m swarmless.baseimages "$1"
}

what=${1:-all}
case "$what" in
  busybox) build_busybox ;;
  python) build_python ;;
  node) build_python; build_lang node ;;
  go|golang) build_python; build_lang go ;;
  all) build_busybox; build_python ;;
  *) say "usage: $0 [all|busybox|python|node|go]"; exit 2 ;;
esac
