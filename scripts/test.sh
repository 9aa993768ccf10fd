#!/usr/bin/env bash
# The test suite with the real services it exercises: a one-node Slurm cluster (started
# here, stopped on exit), podman/qemu prepared for image builds where available, and a
# multi-node Slurm cluster of podman containers (.ci/cluster.sh, removed on exit).
# Called by `make test` (and so by CI); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=.ci/common.sh
source .ci/common.sh
PY=${VENV:-.venv}/bin/python
export PATH="$(dirname "$PY"):$PATH"
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c" || true; done' EXIT

if [ -f .ci/slurm.sh ] && command -v slurmctld >/dev/null; then
  # shellcheck source=/dev/null
  source .ci/slurm.sh
  ci_step "start the one-node Slurm cluster"
  slurm_start
  cleanup+=("slurm_stop")
fi
# Images: a local Debian base (no registry needed) and the x86_64 and a64fx images, built
# for real with podman (the a64fx one under qemu). Cached in $KIT_CI_CACHE between runs.
# KIT_TEST_IMAGES=0 skips them (the image tests then skip, saying why).
export PYTHON="$PY" KIT_CI_CACHE=${KIT_CI_CACHE:-/var/cache/kit-ci}
if [ "${KIT_TEST_IMAGES:-1}" = 1 ] && command -v podman >/dev/null; then
  t0=$(date +%s)
  ci_step "images: .ci/image.sh (x86_64)"
  bash .ci/image.sh
  ci_step "images: .ci/arm64.sh (a64fx under qemu)"
  if [ -e /usr/bin/qemu-aarch64-static ]; then bash .ci/arm64.sh; fi
  echo "test.sh: images ready in $(( $(date +%s) - t0 ))s"
  export CONTAINERS_CONF="$KIT_CI_CACHE/containers.conf"
  # The multi-node cluster (tests/test_multinode.py): 4 node containers + a controller on an
  # internal podman network, from the x86_64 image just built. KIT_TEST_CLUSTER=0 leaves it
  # out (the multi-node tests then skip, saying so).
  if [ "${KIT_TEST_CLUSTER:-1}" = 1 ] && command -v sbatch >/dev/null; then
    t0=$(date +%s)
    ci_step "multi-node cluster: .ci/cluster.sh start 4"
    cleanup+=("bash .ci/cluster.sh stop")
    bash .ci/cluster.sh start 4 >/dev/null
    export KIT_CLUSTER_ENV=${KIT_CLUSTER_DIR:-/tmp/kit-cluster}/cluster.env
    echo "test.sh: multi-node cluster up in $(( $(date +%s) - t0 ))s"
  fi
fi

ci_step "pytest"
set +e
"$PY" -m pytest -ra "$@"
rc=$?
set -e
exit $rc
