#!/usr/bin/env bash
# CI step (idempotent): make podman usable in this sandbox, a local Debian base image
# (debootstrap + podman import, no registry needed), and build the x86_64 kit image with
# tcmalloc. Called by .ci/run before pytest; pytest's podman tests reuse the image.
#
#   env: KIT_CI_CACHE (default /var/cache/kit-ci)   cache of base tarballs, pip, logs
#        PYTHON (default .venv/bin/python, else python3)   the Python that has kit
#        KIT_WHEELHOUSE (default /opt/wheels)   holds torch-2.13.0+cpu-...x86_64.whl
#   after it: export CONTAINERS_CONF=$KIT_CI_CACHE/containers.conf (this script prints it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=.ci/common.sh
source .ci/common.sh
CACHE=${KIT_CI_CACHE:-/var/cache/kit-ci}
ARCH=${KIT_CI_ARCH:-amd64}
mkdir -p "$CACHE/base" "$CACHE/pip" "$CACHE/logs"
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
t0=$(date +%s)
log() { echo "[image.sh $(( $(date +%s) - t0 ))s] $*"; }

# 1. tools
ci_step "install podman and image tools"
need=()
for c in podman:podman buildah:buildah runc:runc debootstrap:debootstrap newuidmap:uidmap fuse-overlayfs:fuse-overlayfs; do
  command -v "${c%%:*}" >/dev/null || need+=("${c##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 2. podman settings for this sandbox only (rlimits it may not raise, cgroups v1 hybrid).
#    A CI-only file: the kit's own defaults are left alone.
ci_step "write containers.conf"
CONF="$CACHE/containers.conf"
cat > "$CONF.tmp" <<'CONFEOF'
# kit CI only: podman settings that work in the CI sandbox (see shared/reference/ci-machine.md)
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONFEOF
mv "$CONF.tmp" "$CONF"
export CONTAINERS_CONF="$CONF"

# 3. the local base image: debootstrap once (cached tarball), import when missing
base_image() {  # $1: amd64|arm64
  local arch=$1 ref=localhost/kit-base:bookworm-$1 tar="$CACHE/base/bookworm-$1.tar"
  ci_step "base image $ref"
  if podman image exists "$ref"; then log "base $ref present"; return; fi
  if [ ! -s "$tar" ]; then
    local mirror
    mirror=$(debian_mirror)
    local root="$CACHE/rootfs-$arch"
    rm -rf "$root"
    log "debootstrap --arch=$arch bookworm from $mirror"
    debootstrap --variant=minbase --arch="$arch" --include=ca-certificates,python3,python3-venv \
      bookworm "$root" "$mirror" > "$CACHE/logs/debootstrap-$arch.log" 2>&1 \
      || { tail -20 "$CACHE/logs/debootstrap-$arch.log"; exit 1; }
    tar -C "$root" -c --numeric-owner --sort=name --mtime=@0 . > "$tar.tmp" && mv "$tar.tmp" "$tar"
    rm -rf "$root"
  fi
  log "podman import $tar -> $ref"
  podman import --arch "$arch" "$tar" "$ref" >/dev/null
}

if [ "${KIT_CI_SOURCE_ONLY:-0}" = 1 ]; then return 0 2>/dev/null || exit 0; fi

base_image amd64
ci_step "build localhost/kit:x86_64-tcmalloc (log: $CACHE/logs/build-x86_64.log)"
WH=${KIT_WHEELHOUSE:-/opt/wheels}
log "building localhost/kit:x86_64-tcmalloc"
"$PY" -m kit image build --target x86_64 --tcmalloc --engine podman \
  --base localhost/kit-base:bookworm-amd64 --wheelhouse "$WH" --pip-cache "$CACHE/pip" \
  --context "$CACHE/ctx/x86_64-tcmalloc" 2>&1 | tee "$CACHE/logs/build-x86_64.log" | grep -E '^(STEP|built|kit:)' | cut -c1-160
podman image prune -f >/dev/null 2>&1 || true   # old untagged builds
log "done; export CONTAINERS_CONF=$CONF"
