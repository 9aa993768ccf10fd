#!/usr/bin/env bash
# The cold path: `make test` as a fresh machine runs it, on this machine, without touching
# the warm caches. A fresh clone of the committed HEAD (as CI clones main), an empty
# $KIT_CI_CACHE and kit cache, a podman store of its own (so none of the kit's images,
# bases or build layers exist for it), its own Slurm directory and ports, its own .venv.
# Only the Debian packages already installed are shared with the warm path.
#
#   make test-cold [PYTEST_ARGS=...]      or   bash scripts/test-cold.sh [pytest args]
#   env: KIT_COLD_DIR (default /var/tmp)  where the cold tree goes; removed afterwards
#        KIT_COLD_KEEP=1                  keep it (logs, bundles, the store) for a look
#
# Run it before submitting any change to .ci/, scripts/, Makefile or containers/.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/common.sh
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
  echo "test-cold: note: uncommitted changes are not part of the cold run (it clones HEAD, as CI clones main)" >&2
root=$(mktemp -d "${KIT_COLD_DIR:-/var/tmp}/kit-cold.XXXXXX")
t0=$(date +%s)
ci_step "fresh clone of HEAD into $root/src"
git clone -q . "$root/src"

ci_step "an empty podman store in $root/storage"
driver=overlay
if command -v podman >/dev/null; then
  driver=$(podman info --format '{{.Store.GraphDriverName}}' 2>/dev/null || echo overlay)
fi
cat > "$root/storage.conf" <<CONF
[storage]
driver = "$driver"
graphroot = "$root/storage"
runroot = "$root/run"
CONF
export CONTAINERS_STORAGE_CONF="$root/storage.conf"
export KIT_CI_CACHE="$root/ci-cache" KIT_CACHE_DIR="$root/kit-cache" PIP_CACHE_DIR="$root/pip-cache"
export KIT_SLURM_DIR="$root/slurm" KIT_SLURMCTLD_PORT=${KIT_SLURMCTLD_PORT:-6917} KIT_SLURMD_PORT=${KIT_SLURMD_PORT:-6918}
# the multi-node cluster's directory, names and subnet apart from a warm run's (podman's networks are host-wide)
export KIT_CLUSTER_DIR="$root/cluster" KIT_CLUSTER_NAME=kitcold KIT_CLUSTER_SUBNET=${KIT_CLUSTER_SUBNET:-10.89.78}

cleanup() {
  if [ "${KIT_COLD_KEEP:-0}" = 1 ]; then echo "test-cold: kept $root" >&2; return; fi
  (cd "$root/src" && KIT_SLURM_DIR="$root/slurm" bash .ci/slurm.sh stop "$root/slurm" >/dev/null 2>&1) || true
  if command -v podman >/dev/null; then podman rmi -a -f >/dev/null 2>&1 || true; fi
  rm -rf "$root" 2>/dev/null || echo "test-cold: could not remove all of $root" >&2
}
trap cleanup EXIT

ci_step "make test in the fresh clone"
set +e
(cd "$root/src" && make test PYTEST_ARGS="$*")
rc=$?
set -e
echo "test-cold: make test exited $rc after $(( $(date +%s) - t0 ))s on a cold path (clone, venv, images, suite)"
exit $rc
