#!/usr/bin/env bash
# The test suite with the real services it exercises: a one-node Slurm cluster (started
# here, stopped on exit) and podman/qemu prepared for image builds where available.
# Called by `make test` (and so by CI); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
export PATH="$(dirname "$PY"):$PATH"
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c" || true; done' EXIT

if [ -f .ci/slurm.sh ] && command -v slurmctld >/dev/null; then
  # shellcheck source=/dev/null
  source .ci/slurm.sh
  slurm_start
  cleanup+=("slurm_stop")
fi
if [ -f .ci/image.sh ] && command -v podman >/dev/null; then
  bash .ci/image.sh
fi
if [ -f .ci/arm64.sh ] && command -v podman >/dev/null && [ -e /usr/bin/qemu-aarch64-static ]; then
  bash .ci/arm64.sh
fi

set +e
"$PY" -m pytest -ra "$@"
rc=$?
set -e
exit $rc
