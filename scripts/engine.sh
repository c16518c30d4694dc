#!/usr/bin/env bash
# Make sure a Docker Engine answers; optionally make it a Swarm manager.
#
#   scripts/engine.sh          ensure the engine (install docker.io and start dockerd if needed)
#   scripts/engine.sh swarm    ... and `docker swarm init` if the engine is not in a Swarm
#
# When no engine answers and we are root on Debian/Ubuntu, docker.io is installed and dockerd
# started in the background (log: /var/log/swarmless-dockerd.log). Otherwise it says what to do.
# Idempotent; every wait is bounded.
set -euo pipefail

WAIT=${SWARMLESS_ENGINE_WAIT:-60}
say() { printf 'engine: %s\n' "$*" >&2; }
answers() { docker info >/dev/null 2>&1; }

wait_engine() {
  local i
  for ((i = 0; i < WAIT * 2; i++)); do answers && return 0; sleep 0.5; done
  return 1
}

ensure_engine() {
  if answers; then return 0; fi
  if [ -n "${DOCKER_HOST:-}" ]; then
    say "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST"
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    say "no Docker Engine answers on /var/run/docker.sock and we are not root."
    say "fix: install Docker (https://docs.docker.com/engine/install/) and start it,"
    say "     e.g. 'sudo apt-get install -y docker.io && sudo systemctl start docker',"
    say "     and add yourself to the 'docker' group."
    exit 1
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      say "no dockerd and no apt-get: install a Docker Engine for this system by hand"
      exit 1
    fi
    say "installing docker.io"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io; } \
      >/var/log/swarmless-apt.log 2>&1 || { say "apt-get install docker.io failed; see /var/log/swarmless-apt.log"; exit 1; }
  fi
  say "starting dockerd"
  # A stale pid file from a killed daemon keeps a new one from starting.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker || true
  fi
  if ! answers; then
    setsid nohup dockerd >/var/log/swarmless-dockerd.log 2>&1 </dev/null &
  fi
  if ! wait_engine; then
    say "dockerd did not answer within ${WAIT}s; see /var/log/swarmless-dockerd.log"
    tail -n 20 /var/log/swarmless-dockerd.log >&2 || true
    exit 1
  fi
  say "engine up: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
}

ensure_swarm() {
  local state
  state=$(docker info --format '{{.Swarm.LocalNodeState}}')
  if [ "$state" = active ]; then return 0; fi
  say "docker swarm init"
  docker swarm init --advertise-addr "${SWARMLESS_SWARM_ADDR:-127.0.0.1}" >/dev/null
}

ensure_engine
case "${1:-}" in
  "") ;;
  swarm) ensure_swarm ;;
  *) say "usage: $0 [swarm]"; exit 2 ;;
esac
