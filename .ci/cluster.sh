#!/usr/bin/env bash
# A real multi-node Slurm cluster for CI and tests, made of podman containers on this machine.
#
#   .ci/cluster.sh start [N]   N node containers (2-4, default 2), each with its own hostname
#                              running munged + slurmd, and a controller container (munged +
#                              slurmctld); prints the `export ...` line for SLURM_CONF,
#                              KIT_CLUSTER_SHARED (the shared directory bundles go to) and
#                              OMPI_MCA_oob_tcp_if_include, and writes them to DIR/cluster.env
#   .ci/cluster.sh stop        removes the containers and the network (and the host's munged
#                              if this script started it)
#   .ci/cluster.sh status      exit 0 when the controller answers and every node is up
#   .ci/cluster.sh image       builds the node image only
#
# Or sourced (scripts/test.sh): `source .ci/cluster.sh; cluster_start N` exports SLURM_CONF and
# KIT_CLUSTER_SHARED into the calling shell; `cluster_stop` removes the cluster.
#
# The node image (containers/cluster-node.Dockerfile) is the kit's own x86_64 image
# (`bash .ci/image.sh` builds it) plus slurmd/slurmctld, munge and OpenMPI; it is built once
# and rebuilt only when that image or the Dockerfile changes (downloaded .debs cached in
# $KIT_CI_CACHE/apt-cluster).
#
# Network: an --internal podman network the script creates (no gateway, no NAT, no DNS): the
# containers reach each other and this host (which gets address .1 on the network's bridge, so
# that sbatch/srun/mpirun run here reach the daemons and the daemons reach them back), and
# nothing else. Names resolve through each container's /etc/hosts (--add-host).
#
# Shared filesystem, as on a real cluster: bind mounts at the same paths as on this host of
# $KIT_CLUSTER_DIR (slurm.conf, logs, and shared/ for bundles), the checkout (read-only), the
# Python that runs the kit (sys.prefix and, unless it is /usr, sys.base_prefix, read-only) and
# every PYTHONPATH entry. A job started from this host (sbatch exports the environment) runs
# the same kit with the same interpreter on every node.
#
#   env: KIT_CLUSTER_DIR (default /tmp/kit-cluster)   conf, logs, munge key copy, shared/
#        KIT_CLUSTER_NAME (default kitc)               prefix of container, host and network names
#        KIT_CLUSTER_SUBNET (default 10.89.77)         the network's /24 (controller .10, nodes .11-.14)
#        KIT_CI_CACHE (default /var/cache/kit-ci)      containers.conf from .ci/image.sh; apt cache
#        PYTHON (default .venv/bin/python, else python3)  the Python whose kit the nodes run
_kit_cluster_sourced=0
[[ "${BASH_SOURCE[0]}" != "$0" ]] && _kit_cluster_sourced=1
if [[ $_kit_cluster_sourced == 0 ]]; then
  set -euo pipefail
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  # shellcheck source=.ci/common.sh
  source .ci/common.sh
fi

CLUSTER_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_DIR=${KIT_CLUSTER_DIR:-/tmp/kit-cluster}
CLUSTER_NAME=${KIT_CLUSTER_NAME:-kitc}
CLUSTER_SUBNET=${KIT_CLUSTER_SUBNET:-10.89.77}
CLUSTER_NET=${CLUSTER_NAME}-net
CLUSTER_IMAGE=localhost/kit-cluster-node:x86_64
CLUSTER_BASE=localhost/kit:x86_64-tcmalloc
CLUSTER_CTL=${CLUSTER_NAME}ctl
: "${KIT_CI_CACHE:=/var/cache/kit-ci}"
[[ -z ${CONTAINERS_CONF:-} && -f $KIT_CI_CACHE/containers.conf ]] && export CONTAINERS_CONF=$KIT_CI_CACHE/containers.conf

_clog() { echo "cluster.sh: $*" >&2; }
_cstep() { if declare -F ci_step >/dev/null; then ci_step "$@"; fi; }

_cluster_python() {
  local py=${PYTHON:-}
  if [[ -z $py ]]; then if [[ -x $CLUSTER_REPO/.venv/bin/python ]]; then py=$CLUSTER_REPO/.venv/bin/python; else py=python3; fi; fi
  echo "$py"
}

cluster_image() {
  _cstep "cluster: node image $CLUSTER_IMAGE"
  podman image exists "$CLUSTER_BASE" || { _clog "$CLUSTER_BASE is missing: build it first (bash .ci/image.sh)"; return 1; }
  local key have
  key="$(podman image inspect -f '{{.Id}}' "$CLUSTER_BASE")-$(sha256sum "$CLUSTER_REPO/containers/cluster-node.Dockerfile" | cut -c1-64)"
  have=$(podman image inspect -f '{{index .Labels "org.kit.cluster.key"}}' "$CLUSTER_IMAGE" 2>/dev/null || true)
  if [[ $have == "$key" ]]; then return 0; fi
  mkdir -p "$KIT_CI_CACHE/apt-cluster" "$KIT_CI_CACHE/logs"
  _clog "building $CLUSTER_IMAGE from $CLUSTER_BASE (log: $KIT_CI_CACHE/logs/build-cluster-node.log)"
  podman build --build-arg "KIT_IMAGE=$CLUSTER_BASE" --label "org.kit.cluster.key=$key" \
    -v "$KIT_CI_CACHE/apt-cluster:/var/cache/apt/archives" \
    -t "$CLUSTER_IMAGE" -f "$CLUSTER_REPO/containers/cluster-node.Dockerfile" "$CLUSTER_REPO/containers" \
    > "$KIT_CI_CACHE/logs/build-cluster-node.log" 2>&1 \
    || { tail -20 "$KIT_CI_CACHE/logs/build-cluster-node.log" >&2; return 1; }
}

_cluster_conf() {  # $1: node count; the shared part from .ci/slurm.sh's slurm_conf
  local n=$1 i cpus mem
  cpus=$(nproc)
  mem=$(awk -v n="$n" '/MemTotal/ {printf "%d", $2/1024*0.8/n}' /proc/meminfo)
  {
    # shellcheck source=.ci/slurm.sh
    (source "$CLUSTER_REPO/.ci/slurm.sh"
     slurm_conf title="multi-node test cluster written by .ci/cluster.sh: $n node containers + a controller container" \
       cluster=kitcluster ctl="$CLUSTER_CTL($CLUSTER_SUBNET.10)" state=/var/spool/slurmctld spool=/var/spool/slurmd \
       pids=/run logs="$CLUSTER_DIR/log" slurmd_log="slurmd-%n.log" kill_wait=5) || return 1
    echo "SlurmdTimeout=15"
    echo "MessageTimeout=10"
    for i in $(seq 1 "$n"); do
      echo "NodeName=${CLUSTER_NAME}node$i NodeAddr=$CLUSTER_SUBNET.$((10 + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=${CLUSTER_NAME}node[1-$n] Default=YES MaxTime=INFINITE State=UP"
  } > "$CLUSTER_DIR/slurm.conf"
}

_cluster_ready() {  # $1: node count
  local up
  SLURM_CONF=$CLUSTER_DIR/slurm.conf scontrol ping 2>/dev/null | grep -q UP || return 1
  up=$(SLURM_CONF=$CLUSTER_DIR/slurm.conf sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE ' (idle|alloc|mix)$') || return 1
  [[ $up -ge $1 ]]
}

_cluster_mounts() {  # the shared filesystem: "-v" "SRC:SRC[:ro]" pairs, one word per line
  local py prefix base p q paths=() seen=()
  py=$(_cluster_python)
  read -r prefix base < <("$py" -c 'import sys; print(sys.prefix, sys.base_prefix)')
  paths=("$CLUSTER_REPO" "$prefix")
  [[ $base == /usr ]] || paths+=("$base")
  local IFS=:
  for p in ${PYTHONPATH:-}; do [[ -d $p ]] && paths+=("$(cd "$p" && pwd)"); done
  unset IFS
  echo -v; echo "$CLUSTER_DIR:$CLUSTER_DIR"
  for p in "${paths[@]}"; do
    for q in "${seen[@]}"; do [[ $p == "$q" || $p == "$q"/* ]] && continue 2; done
    seen+=("$p"); echo -v; echo "$p:$p:ro"
  done
}

_cluster_run() {  # $1: name, $2: ip, $3...: the daemon's command line
  local name=$1 ip=$2; shift 2
  local mounts=() hosts=(--add-host "$(hostname):$CLUSTER_SUBNET.1" --add-host "$CLUSTER_CTL:$CLUSTER_SUBNET.10") i
  mapfile -t mounts < <(_cluster_mounts)
  for i in 1 2 3 4; do hosts+=(--add-host "${CLUSTER_NAME}node$i:$CLUSTER_SUBNET.$((10 + i))"); done
  # munged needs its key owned by the image's munge user; slurmd/slurmctld stay in the
  # foreground under a bash that reaps what they leave (no --init binary in this podman)
  podman run -d --name "$name" --hostname "$name" --network "$CLUSTER_NET" --ip "$ip" "${hosts[@]}" \
    --cap-add SYS_PTRACE --label "org.kit.cluster=$CLUSTER_NAME" "${mounts[@]}" "$CLUSTER_IMAGE" \
    bash -c 'install -o munge -g munge -m 400 "$0/munge.key" /etc/munge/munge.key &&
             mkdir -p /run/munge && chown munge:munge /run/munge && runuser -u munge -- /usr/sbin/munged &&
             "$@" & wait' "$CLUSTER_DIR" "$@" >/dev/null
}

cluster_start() {  # $1: node count
  local n=${1:-2} t0 i bridge
  t0=$(date +%s)
  [[ $n =~ ^[2-4]$ ]] || { _clog "node count must be 2, 3 or 4 (got $n)"; return 2; }
  [[ $(id -u) == 0 ]] || { _clog "needs root (podman, munged, SlurmUser=root)"; return 1; }
  command -v podman >/dev/null || { _clog "podman is not installed"; return 1; }
  command -v sbatch >/dev/null || { _clog "Slurm's clients are not installed (apt-get install slurm-wlm munge)"; return 1; }
  if podman container exists "${CLUSTER_NAME}node$n" && _cluster_ready "$n"; then
    _cluster_export; return 0
  fi
  cluster_stop
  cluster_image || return 1
  _cstep "cluster: host munged and key"
  mkdir -p "$CLUSTER_DIR/log" "$CLUSTER_DIR/shared"
  # shellcheck source=.ci/slurm.sh
  (source "$CLUSTER_REPO/.ci/slurm.sh"; DIR=$CLUSTER_DIR; start_munge) || return 1
  install -m 400 /etc/munge/munge.key "$CLUSTER_DIR/munge.key"
  _cluster_conf "$n"
  _cstep "cluster: internal network $CLUSTER_NET ($CLUSTER_SUBNET.0/24)"
  podman network exists "$CLUSTER_NET" || podman network create --internal --subnet "$CLUSTER_SUBNET.0/24" "$CLUSTER_NET" >/dev/null
  _cstep "cluster: controller and $n node containers"
  _cluster_run "$CLUSTER_CTL" "$CLUSTER_SUBNET.10" slurmctld -D -f "$CLUSTER_DIR/slurm.conf"
  bridge=$(podman network inspect -f '{{.NetworkInterface}}' "$CLUSTER_NET")
  ip addr show dev "$bridge" | grep -q "inet $CLUSTER_SUBNET.1/" || ip addr add "$CLUSTER_SUBNET.1/24" dev "$bridge"
  for i in $(seq 1 "$n"); do
    _cluster_run "${CLUSTER_NAME}node$i" "$CLUSTER_SUBNET.$((10 + i))" slurmd -D -f "$CLUSTER_DIR/slurm.conf" -N "${CLUSTER_NAME}node$i"
  done
  _cstep "cluster: wait for the controller and $n idle nodes"
  for _ in $(seq 150); do _cluster_ready "$n" && break; sleep 0.2; done
  if ! _cluster_ready "$n"; then
    _clog "cluster did not come up in 30 s; see $CLUSTER_DIR/log/"
    tail -n 15 "$CLUSTER_DIR"/log/*.log >&2 || true
    SLURM_CONF=$CLUSTER_DIR/slurm.conf sinfo -N >&2 || true
    return 1
  fi
  _clog "$n nodes up in $(( $(date +%s) - t0 ))s: SLURM_CONF=$CLUSTER_DIR/slurm.conf"
  _cluster_export
}

# What a client on this host needs (also written to $CLUSTER_DIR/cluster.env, KEY=VALUE lines):
# the Slurm config, the shared directory, and the network OpenMPI's daemons must use to reach
# an mpirun started here (this host's other interfaces are unreachable from the nodes).
_cluster_export() {
  export SLURM_CONF=$CLUSTER_DIR/slurm.conf KIT_CLUSTER_SHARED=$CLUSTER_DIR/shared \
    OMPI_MCA_oob_tcp_if_include=$CLUSTER_SUBNET.0/24
  printf '%s\n' "SLURM_CONF=$SLURM_CONF" "KIT_CLUSTER_SHARED=$KIT_CLUSTER_SHARED" \
    "OMPI_MCA_oob_tcp_if_include=$OMPI_MCA_oob_tcp_if_include" "KIT_CLUSTER_NAME=$CLUSTER_NAME" > "$CLUSTER_DIR/cluster.env"
  [[ $_kit_cluster_sourced == 1 ]] ||
    echo "export SLURM_CONF=$SLURM_CONF KIT_CLUSTER_SHARED=$KIT_CLUSTER_SHARED OMPI_MCA_oob_tcp_if_include=$OMPI_MCA_oob_tcp_if_include"
}

cluster_stop() {
  _cstep "cluster: stop"
  rm -f "$CLUSTER_DIR/cluster.env"
  local ids bridge
  ids=$(podman ps -aq --filter "label=org.kit.cluster=$CLUSTER_NAME" 2>/dev/null || true)
  [[ -z $ids ]] || podman rm -f -t 0 $ids >/dev/null
  if podman network exists "$CLUSTER_NET" 2>/dev/null; then
    bridge=$(podman network inspect -f '{{.NetworkInterface}}' "$CLUSTER_NET")
    ip addr del "$CLUSTER_SUBNET.1/24" dev "$bridge" 2>/dev/null || true  # this host's address on it
    podman network rm -f "$CLUSTER_NET" >/dev/null
  fi
  if [[ -f $CLUSTER_DIR/munged.ours && -f $CLUSTER_DIR/munged.pid ]]; then
    kill "$(cat "$CLUSTER_DIR/munged.pid")" 2>/dev/null || true
    rm -f "$CLUSTER_DIR/munged.ours"
  fi
}

cluster_status() {
  local n
  n=$(grep -c '^NodeName=' "$CLUSTER_DIR/slurm.conf" 2>/dev/null) || return 1
  _cluster_ready "$n"
}

if [[ $_kit_cluster_sourced == 0 ]]; then
  case ${1:-start} in
    start) cluster_start "${2:-2}" ;;
    stop) cluster_stop ;;
    status) cluster_status ;;
    image) cluster_image ;;
    *) echo "usage: $0 start [N]|stop|status|image" >&2; exit 2 ;;
  esac
fi
