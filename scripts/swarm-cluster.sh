#!/usr/bin/env bash
# A 3-node Docker Swarm of Docker-in-Docker nodes on this engine, for tests and benchmarks.
#
#   scripts/swarm-cluster.sh up [IMAGE...]   build the node image if needed, start the nodes,
#                                            form the Swarm, load IMAGEs onto every node
#   scripts/swarm-cluster.sh load IMAGE...   docker save | docker load onto every node
#                                            (skipped where the node has the same image id;
#                                            through a registry: SWARMLESS_SWARM_REGISTRY)
#   scripts/swarm-cluster.sh image           build the node image only (if missing)
#   scripts/swarm-cluster.sh trust ADDR...   the nodes' engines pull from these registries
#                                            over plain HTTP (insecure-registries in each
#                                            node's daemon.json, reloaded by SIGHUP: no restart)
#   scripts/swarm-cluster.sh untrust ADDR... ... and no longer
#   scripts/swarm-cluster.sh status          nodes, their engines and the Swarm's view
#   scripts/swarm-cluster.sh env             shell lines: DOCKER_HOST of the manager, node IPs
#   scripts/swarm-cluster.sh remove-node K   node K (a worker) leaves the Swarm; its entry, its
#                                            container and its volume are removed (a node added
#                                            with SWARMLESS_SWARM_NODES=K up, e.g. by a test)
#   scripts/swarm-cluster.sh down            remove the nodes, their volumes and the network
#
# Layout: the bridge network swarmless-swarm-nodes (a /24 with static addresses .11-.13),
# containers swarmless-node-1..N (label swarmless.swarm-node=true), each running dockerd with
# overlay2 on its own volume swarmless-node-K-data; each engine listens without TLS on
# tcp://<node ip>:2375 only, and drops that port for anything that does not come in on the
# node's eth0 (so function containers inside the node cannot reach their engine). Node 1 is
# the manager (`swarm init --dispatcher-heartbeat 1s`), the others join as workers.
#
# Node containers run --privileged where the kernel allows it; where it does not ("unable to
# apply caps" on some VMs) they get every capability but SYS_RESOURCE and no LSM/seccomp
# confinement, and the entrypoint remounts /sys and the cgroup v1 hierarchies read-write.
#
# Environment:
#   SWARMLESS_SWARM_NODES=3           number of nodes
#   SWARMLESS_SWARM_SUBNET=           the nodes' /24 (default: the first free of a few)
#   SWARMLESS_SWARM_LABELS=           extra labels k=v,k=v on every object (tests: swarmless.test)
#   SWARMLESS_SWARM_PRIVILEGED=auto   auto | 1 (always --privileged) | 0 (never)
#   SWARMLESS_NODE_IMAGE=swarmless/dind-node:bookworm
#   SWARMLESS_SWARM_REGISTRY=         HOST:PORT of a registry the nodes pull from, also served
#                                     on 127.0.0.1:PORT here: `load` goes through it (pushed
#                                     once, only missing layers pulled) instead of save|load
#   SWARMLESS_DEBIAN_MIRROR=http://deb.debian.org/debian
#
# Idempotent: `up` on a running cluster only checks it (and restarts stopped nodes, rejoining
# them); every wait is bounded and says what it waited for when it gives up.
set -euo pipefail

NODES=${SWARMLESS_SWARM_NODES:-3}
NET=swarmless-swarm-nodes
PREFIX=swarmless-node
LABEL=swarmless.swarm-node=true
NODE_IMAGE=${SWARMLESS_NODE_IMAGE:-swarmless/dind-node:bookworm}
MIRROR=${SWARMLESS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PORT=2375
WAIT=${SWARMLESS_SWARM_WAIT:-60}

say() { printf 'swarm-cluster: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

label_args() {
  local args=(--label "$LABEL") kv
  if [ -n "${SWARMLESS_SWARM_LABELS:-}" ]; then
    IFS=, read -ra kvs <<<"$SWARMLESS_SWARM_LABELS"
    for kv in "${kvs[@]}"; do args+=(--label "$kv"); done
  fi
  printf '%s\n' "${args[@]}"
}

node_name() { printf '%s-%d' "$PREFIX" "$1"; }
node_ip() {
  docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$(node_name "$1")" 2>/dev/null
}
ndocker() {  # ndocker K ARGS...: the docker CLI against node K's engine, over TCP
  local k=$1
  shift
  docker -H "tcp://$(node_ip "$k"):$PORT" "$@"
}
running() { [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
gone() {  # gone NAME: bounded wait until no container NAME exists (removal done)
  local i
  for ((i = 0; i < WAIT * 4; i++)); do
    docker inspect "$1" >/dev/null 2>&1 || return 0
    sleep 0.25
  done
  return 1
}

# -- the node image ---------------------------------------------------------------------

ENTRYPOINT_SH='#!/bin/sh
# swarmless DinD node: writable /sys and cgroups, an iptables that works, then dockerd.
set -u
mount -o remount,rw /sys 2>/dev/null || echo "node: cannot remount /sys rw" >&2
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  # cgroup v2: leave the root cgroup to dockerd (the usual DinD move).
  mkdir -p /sys/fs/cgroup/init
  xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
  sed -e "s/ / +/g" -e "s/^/+/" </sys/fs/cgroup/cgroup.controllers \
    >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || :
else
  mount -o remount,rw /sys/fs/cgroup 2>/dev/null || :
  # Each hierarchy shares its superblock with the host: flip only the ro flag of this mount.
  for d in /sys/fs/cgroup/*/; do
    mount -o remount,bind,rw "$d" 2>/dev/null || mount -o remount,rw "$d" 2>/dev/null \
      || echo "node: cannot remount $d rw" >&2
  done
fi
if ! iptables-nft -L -n >/dev/null 2>&1 && iptables-legacy -L -n >/dev/null 2>&1; then
  update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
  update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null
fi
ip=$(ip -4 -o addr show dev eth0 | awk "{print \$4}" | cut -d/ -f1)
[ -n "$ip" ] || { echo "node: eth0 has no IPv4 address" >&2; exit 1; }
# The engine port is for the host and the other nodes (on eth0), never for containers.
iptables -C INPUT -p tcp --dport 2375 ! -i eth0 -j DROP 2>/dev/null \
  || iptables -I INPUT -p tcp --dport 2375 ! -i eth0 -j DROP
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
exec dockerd -H unix:///var/run/docker.sock -H "tcp://$ip:2375" --tls=false \
  --storage-driver=overlay2 --log-level=warn
'

build_node_image() {
  if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then return 0; fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing debootstrap"
      apt-get install -y -q debootstrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; } \
        || die "cannot install debootstrap"
    else
      die "need debootstrap (Debian package) to build $NODE_IMAGE"
    fi
  fi
  local root
  root=$(mktemp -d /var/tmp/swarmless-node-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$root' '$root.log'" RETURN
  say "building $NODE_IMAGE: debootstrap $SUITE with docker.io (about a minute)"
  timeout 900 debootstrap --variant=minbase \
    --include=docker.io,iproute2,iptables,ca-certificates,procps \
    "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; die "debootstrap failed"; }
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*
  # The image's own entrypoint; `up` passes the script's current one instead (no rebuild).
  printf '%s' "$ENTRYPOINT_SH" >"$root/usr/local/bin/swarmless-node"
  chmod 755 "$root/usr/local/bin/swarmless-node"
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'VOLUME /var/lib/docker' \
    -c 'ENTRYPOINT ["/usr/local/bin/swarmless-node"]' \
    -c 'LABEL swarmless.base=dind-node' \
    - "$NODE_IMAGE" >/dev/null
  say "built $NODE_IMAGE"
}

# -- network and nodes ------------------------------------------------------------------

subnet() {
  docker network inspect -f '{{(index .IPAM.Config 0).Subnet}}' "$NET" 2>/dev/null | cut -d/ -f1 \
    | sed 's/\.0$//'
}

ensure_network() {
  if docker network inspect "$NET" >/dev/null 2>&1; then return 0; fi
  local candidates cand
  if [ -n "${SWARMLESS_SWARM_SUBNET:-}" ]; then
    candidates=$SWARMLESS_SWARM_SUBNET
  else
    candidates="10.213.7.0/24 10.213.8.0/24 172.30.213.0/24 192.168.213.0/24"
  fi
  mapfile -t labels < <(label_args)
  for cand in $candidates; do
    if docker network create --driver bridge --subnet "$cand" "${labels[@]}" "$NET" \
      >/dev/null 2>&1; then
      say "network $NET on $cand"
      return 0
    fi
  done
  die "cannot create network $NET on any of: $candidates (set SWARMLESS_SWARM_SUBNET)"
}

PRIV_ARGS=()
security_args() {
  local mode=${SWARMLESS_SWARM_PRIVILEGED:-auto}
  if [ "$mode" = auto ]; then
    if docker run --rm --privileged --entrypoint /bin/true "$NODE_IMAGE" >/dev/null 2>&1; then
      mode=1
    else
      mode=0
    fi
  fi
  if [ "$mode" = 1 ]; then
    PRIV_ARGS=(--privileged)
  else
    PRIV_ARGS=(--cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
      --security-opt apparmor=unconfined --security-opt systempaths=unconfined
      --security-opt label=disable)
  fi
}

start_node() {
  local k=$1 name ip
  name=$(node_name "$k")
  if docker inspect "$name" >/dev/null 2>&1; then
    case "$(docker inspect -f '{{.State.Status}}' "$name" 2>/dev/null)" in
      running) return 0 ;;
      removing | dead)
        # Being removed (a `down` that outlived its caller's timeout) or half-removed: wait
        # for the removal, bounded, then make the node anew below.
        say "waiting for $name, being removed, to be gone"
        gone "$name" || die "$name is still being removed after ${WAIT}s"
        ;;
      *)
        say "starting stopped $name"
        if ! docker start "$name" >/dev/null; then
          say "$name does not start: making it anew"
          docker rm -f -v "$name" >/dev/null 2>&1 || true
          gone "$name" || die "cannot remove $name to make it anew"
        else
          return 0
        fi
        ;;
    esac
  fi
  [ ${#PRIV_ARGS[@]} -gt 0 ] || security_args
  ip="$(subnet).$((10 + k))"
  mapfile -t labels < <(label_args)
  docker volume create "${labels[@]}" "$name-data" >/dev/null
  docker run -d --name "$name" --hostname "$name" --network "$NET" --ip "$ip" \
    "${labels[@]}" "${PRIV_ARGS[@]}" \
    -v "$name-data:/var/lib/docker" --tmpfs /run --tmpfs /tmp \
    --stop-timeout 5 --entrypoint /bin/sh "$NODE_IMAGE" -c "$ENTRYPOINT_SH" >/dev/null
}

wait_engine() {  # wait_engine K: bounded wait for node K's engine over TCP
  local k=$1 i
  for ((i = 0; i < WAIT * 4; i++)); do
    ndocker "$k" version --format '{{.Server.Version}}' >/dev/null 2>&1 && return 0
    running "$(node_name "$k")" || break
    sleep 0.25
  done
  docker logs --tail 20 "$(node_name "$k")" >&2 2>&1 || true
  die "the engine of $(node_name "$k") did not answer on tcp://$(node_ip "$k"):$PORT"
}

swarm_state() { ndocker "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null; }

ensure_swarm() {
  local ip1 state token k i ready
  ip1=$(node_ip 1)
  state=$(swarm_state 1)
  if [ "$state" != active ]; then
    say "swarm init on $(node_name 1) ($ip1)"
    ndocker 1 swarm init --advertise-addr "$ip1" --listen-addr "$ip1:2377" \
      --dispatcher-heartbeat 1s >/dev/null
  fi
  token=$(ndocker 1 swarm join-token -q worker)
  for ((k = 2; k <= NODES; k++)); do
    state=$(swarm_state "$k")
    if [ "$state" = active ] || [ "$state" = pending ]; then continue; fi
    # A node whose Swarm state was lost (or a stale entry of it on the manager): join anew.
    ndocker 1 node rm --force "$(node_name "$k")" >/dev/null 2>&1 || true
    ndocker "$k" swarm leave --force >/dev/null 2>&1 || true
    ndocker "$k" swarm join --token "$token" --advertise-addr "$(node_ip "$k")" \
      --listen-addr "$(node_ip "$k"):2377" "$ip1:2377" >/dev/null
  done
  for ((i = 0; i < WAIT * 4; i++)); do
    ready=$(ndocker 1 node ls --format '{{.Hostname}} {{.Status}}' 2>/dev/null | sort -u \
      | awk '$2 == "Ready" {print $1}' | sort -u | grep -c "^$PREFIX-" || true)
    [ "$ready" -ge "$NODES" ] && return 0
    sleep 0.25
  done
  ndocker 1 node ls >&2 || true
  die "the Swarm did not show $NODES ready nodes within ${WAIT}s"
}

cmd_up() {
  command -v docker >/dev/null || die "no docker CLI; run scripts/engine.sh first"
  docker info >/dev/null 2>&1 || die "no Docker Engine answers; run scripts/engine.sh first"
  local t0=$SECONDS k
  build_node_image
  ensure_network
  for ((k = 1; k <= NODES; k++)); do start_node "$k"; done
  for ((k = 1; k <= NODES; k++)); do wait_engine "$k"; done
  ensure_swarm
  # Drop Swarm entries of nodes that no longer exist (an earlier, bigger cluster).
  ndocker 1 node ls --format '{{.ID}} {{.Hostname}} {{.Status}}' | while read -r id host st; do
    if [ "$st" = Down ]; then ndocker 1 node rm --force "$id" >/dev/null 2>&1 || true; fi
  done
  say "up: $NODES nodes in $((SECONDS - t0))s; manager tcp://$(node_ip 1):$PORT"
  if [ $# -gt 0 ]; then cmd_load "$@"; fi
}

# load through a registry: the host's engine pushes to 127.0.0.1:PORT, the nodes pull from
# HOST:PORT (both names of one registry, e.g. `swarmless registry up --listen
# 127.0.0.1:5000 --listen 10.213.7.1:5000`); only layers a node lacks travel, once.
load_by_registry() {  # load_by_registry IMAGE NODE...
  local img=$1 reg=$SWARMLESS_SWARM_REGISTRY port k pids=()
  shift
  port=${reg##*:}
  docker tag "$img" "127.0.0.1:$port/$img"
  docker push -q "127.0.0.1:$port/$img" >/dev/null || die "pushing $img to 127.0.0.1:$port failed"
  docker rmi "127.0.0.1:$port/$img" >/dev/null
  for k in "$@"; do
    (timeout 300 docker -H "tcp://$(node_ip "$k"):$PORT" pull -q "$reg/$img" >/dev/null \
      && docker -H "tcp://$(node_ip "$k"):$PORT" tag "$reg/$img" "$img" \
      && docker -H "tcp://$(node_ip "$k"):$PORT" rmi "$reg/$img" >/dev/null) &
    pids+=($!)
  done
  for k in "${pids[@]}"; do wait "$k" || die "pulling $reg/$img onto a node failed"; done
}

cmd_load() {
  [ $# -gt 0 ] || die "usage: $0 load IMAGE..."
  local img id tmp k pids=() need
  if [ -n "${SWARMLESS_SWARM_REGISTRY:-}" ]; then cmd_trust add "$SWARMLESS_SWARM_REGISTRY"; fi
  tmp=$(mktemp -d /var/tmp/swarmless-load.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  for img in "$@"; do
    id=$(docker image inspect -f '{{.Id}}' "$img" 2>/dev/null) || die "no image $img on this engine"
    need=()
    for ((k = 1; k <= NODES; k++)); do
      if [ "$(ndocker "$k" image inspect -f '{{.Id}}' "$img" 2>/dev/null)" != "$id" ]; then
        need+=("$k")
      fi
    done
    [ ${#need[@]} -gt 0 ] || continue
    if [ -n "${SWARMLESS_SWARM_REGISTRY:-}" ]; then
      load_by_registry "$img" "${need[@]}"
      say "pulled $img onto node(s) ${need[*]} from $SWARMLESS_SWARM_REGISTRY"
      continue
    fi
    docker save -o "$tmp/image.tar" "$img"
    pids=()
    for k in "${need[@]}"; do
      (timeout 300 docker -H "tcp://$(node_ip "$k"):$PORT" load -q -i "$tmp/image.tar" >/dev/null) &
      pids+=($!)
    done
    for k in "${pids[@]}"; do wait "$k" || die "loading $img onto a node failed"; done
    say "loaded $img onto node(s) ${need[*]}"
    rm -f "$tmp/image.tar"
  done
}

# The registries a node's engine accepts over plain HTTP: one HOST:PORT a line in this file
# of the node, made into its /etc/docker/daemon.json; dockerd reloads insecure-registries on
# SIGHUP (no restart: the Swarm and its tasks are not disturbed). The file lives in the
# node's container, so it survives a restart of the node, not its removal.
TRUSTED=/etc/docker/swarmless-insecure-registries
TRUST_SH='f=$1; op=$2; shift 2; mkdir -p /etc/docker; touch "$f"
for a in "$@"; do
  grep -vxF "$a" "$f" >"$f.new" || :
  [ "$op" = add ] && echo "$a" >>"$f.new"
  mv "$f.new" "$f"
done
printf "{\"insecure-registries\": [%s]}\n" "$(sed "s/.*/\"&\"/" "$f" | paste -sd, -)" \
  >/etc/docker/daemon.json.new && mv /etc/docker/daemon.json.new /etc/docker/daemon.json'

cmd_trust() {  # cmd_trust add|remove ADDR...
  local op=$1 k name a i ok
  shift
  [ $# -gt 0 ] || die "usage: $0 trust|untrust HOST:PORT..."
  for a in "$@"; do
    [[ $a =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || die "not HOST:PORT: $a"
  done
  for ((k = 1; k <= NODES; k++)); do
    name=$(node_name "$k")
    running "$name" || die "$name is not running"
    docker exec "$name" sh -c "$TRUST_SH" sh "$TRUSTED" "$op" "$@"
    docker kill -s HUP "$name" >/dev/null
  done
  for ((k = 1; k <= NODES; k++)); do
    for a in "$@"; do
      ok=
      for ((i = 0; i < WAIT * 4; i++)); do
        if ndocker "$k" info --format '{{json .RegistryConfig.IndexConfigs}}' 2>/dev/null \
          | grep -q "\"$a\""; then
          [ "$op" = add ] && ok=1 && break
        elif [ "$op" = remove ]; then
          ok=1 && break
        fi
        sleep 0.25
      done
      [ -n "$ok" ] || die "the engine of $(node_name "$k") did not reload its registries ($a)"
    done
  done
  say "nodes 1-$NODES: $([ "$op" = add ] && echo trust || echo no longer trust) $*"
}

cmd_status() {
  local k name
  for ((k = 1; k <= NODES; k++)); do
    name=$(node_name "$k")
    if ! docker inspect "$name" >/dev/null 2>&1; then
      echo "$name: absent"
    elif ! running "$name"; then
      echo "$name: stopped"
    else
      echo "$name: running, engine tcp://$(node_ip "$k"):$PORT" \
        "$(ndocker "$k" version --format '{{.Server.Version}}' 2>/dev/null || echo '(no answer)')" \
        "swarm=$(swarm_state "$k" || echo '?')"
    fi
  done
  if docker inspect "$(node_name 1)" >/dev/null 2>&1 && running "$(node_name 1)"; then
    ndocker 1 node ls 2>/dev/null || true
  fi
}

cmd_env() {
  echo "DOCKER_HOST=tcp://$(node_ip 1):$PORT"
  local k
  for ((k = 1; k <= NODES; k++)); do echo "SWARMLESS_NODE_${k}=$(node_ip "$k")"; done
}

cmd_remove_node() {
  local k=${1:-} name id host ids
  [[ $k =~ ^[0-9]+$ ]] && [ "$k" -gt 1 ] || die "usage: $0 remove-node K (K > 1: node 1 is the manager)"
  name=$(node_name "$k")
  if running "$name"; then ndocker "$k" swarm leave --force >/dev/null 2>&1 || true; fi
  if running "$(node_name 1)"; then
    ndocker 1 node ls --format '{{.ID}} {{.Hostname}}' 2>/dev/null | while read -r id host; do
      if [ "$host" = "$name" ]; then ndocker 1 node rm --force "$id" >/dev/null 2>&1 || true; fi
    done
  fi
  # Only the cluster's own objects: the node label *and* the node's name.
  ids=$(docker ps -aq --filter "label=$LABEL" --filter "name=^/$name\$")
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    docker rm -f -v $ids >/dev/null
  fi
  if [ "$(docker volume inspect -f '{{index .Labels "swarmless.swarm-node"}}' "$name-data" 2>/dev/null)" = true ]; then
    docker volume rm -f "$name-data" >/dev/null
  fi
  say "removed $name"
}

cmd_down() {
  # Only the cluster's own objects: the node label *and* the node names (a label alone can
  # come from anyone's image or command line).
  local ids v vols=()
  ids=$(docker ps -aq --filter "label=$LABEL" --filter "name=^/$PREFIX-[0-9]+\$")
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    docker rm -f -v $ids >/dev/null
  fi
  for v in $(docker volume ls -q --filter "label=$LABEL"); do
    if [[ $v =~ ^$PREFIX-[0-9]+-data$ ]]; then vols+=("$v"); fi
  done
  if [ "${#vols[@]}" -gt 0 ]; then docker volume rm -f "${vols[@]}" >/dev/null; fi
  if [ "$(docker network inspect -f '{{index .Labels "swarmless.swarm-node"}}' "$NET" 2>/dev/null)" = true ]; then
    docker network rm "$NET" >/dev/null
  fi
  if [ "${1:-}" = --purge ]; then docker image rm -f "$NODE_IMAGE" >/dev/null 2>&1 || true; fi
  say "down"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  load) shift; cmd_load "$@" ;;
  image) build_node_image ;;
  trust) shift; cmd_trust add "$@" ;;
  untrust) shift; cmd_trust remove "$@" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  remove-node) shift; cmd_remove_node "$@" ;;
  down) shift; cmd_down "$@" ;;
  *)
    say "usage: $0 up [IMAGE...] | load IMAGE... | image | trust|untrust ADDR... | status | env" \
      "| remove-node K | down [--purge]"
    exit 2
    ;;
esac
