#!/usr/bin/env bash
# Install the Debian/Ubuntu packages kit needs, only those missing. Idempotent.
#
#   scripts/system-packages.sh run    what `kit run` needs on a workstation (compiler for
#                                     DeepSpeed's small CPU op, tcmalloc, python3-venv)
#   scripts/system-packages.sh test   also what the test suite exercises for real:
#                                     OpenMPI, a one-node Slurm cluster, podman, qemu for arm64
set -euo pipefail
what=${1:-run}
run_pkgs=(make g++ ninja-build libgoogle-perftools4 numactl ca-certificates)
test_pkgs=(openmpi-bin libopenmpi-dev slurm-wlm munge podman buildah runc debootstrap uidmap
           fuse-overlayfs qemu-user-static binfmt-support)
pkgs=("${run_pkgs[@]}")
[ "$what" = test ] && pkgs+=("${test_pkgs[@]}")
# python3 -m venv needs Debian's python3-venv when python3 is the system's
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then pkgs+=(python3-venv python3-dev); fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "kit: need root (or sudo) to install: ${missing[*]}" >&2; exit 2; }
  SUDO=sudo
fi
echo "kit: installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
