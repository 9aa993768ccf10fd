#!/usr/bin/env bash
# CI step (idempotent): arm64 under emulation. Registers qemu-aarch64 with binfmt_misc,
# makes the arm64 base (debootstrap --arch=arm64 + podman import --arch arm64, tarball
# cached) and builds the a64fx image with tcmalloc, --staged: the host's own pip downloads
# the pinned aarch64 wheels and unpacks them (kit.image.stage; wheels and the unpacked tree
# kept in $KIT_CI_CACHE/wheels), so pip under emulation only checks them.
# pytest's arm64 tests then run `kit run tiny --preset tuned` in it with QEMU_CPU=a64fx.
#
#   env: as .ci/image.sh (KIT_CI_CACHE, PYTHON); after it:
#        export CONTAINERS_CONF=$KIT_CI_CACHE/containers.conf
set -euo pipefail
cd "$(dirname "$0")/.."
KIT_CI_SOURCE_ONLY=1 source .ci/image.sh   # tools, containers.conf, base_image(), log()

# 1. qemu-aarch64 via binfmt_misc
ci_step "register qemu-aarch64 with binfmt_misc"
if ! command -v update-binfmts >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || { echo "qemu-aarch64 binfmt not enabled" >&2; exit 1; }

# 2. base
base_image arm64

# 3. the a64fx image
ci_step "build localhost/kit:a64fx-tcmalloc under emulation (log: $CACHE/logs/build-a64fx.log)"
log "building localhost/kit:a64fx-tcmalloc (emulated)"
"$PY" -m kit image build --target a64fx --tcmalloc --engine podman \
  --base localhost/kit-base:bookworm-arm64 --pip-cache "$CACHE/pip" --staged --wheel-cache "$CACHE/wheels" \
  --context "$CACHE/ctx/a64fx-tcmalloc" 2>&1 | tee "$CACHE/logs/build-a64fx.log" | grep -E '^(STEP|built|staged|kit:)' | cut -c1-160
podman image prune -f >/dev/null 2>&1 || true   # old untagged builds
log "done; export CONTAINERS_CONF=$CONF"
