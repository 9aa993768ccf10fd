# Sourced by the CI scripts (.ci/*.sh, scripts/test.sh): a failing step says which step,
# where and why on stderr, instead of ending silently under `set -e`.
#
#   ci_step "what is being done"   names the step a failure is reported against
#   debian_mirror                  the configured Debian mirror (deb822 .sources or
#                                  one-line .list files; Debian 12/13 have no sources.list)
_ci_script=$(basename "${BASH_SOURCE[1]:-$0}")
_ci_step="start"
ci_step() { _ci_step=$*; }
_ci_fail() {
  local rc=$? line=$1 cmd=$2
  echo "${_ci_script}: step '${_ci_step}' failed (exit ${rc}) at line ${line}: ${cmd}" >&2
}
set -E
trap '_ci_fail "$LINENO" "$BASH_COMMAND"' ERR

debian_mirror() {
  local f files=() m=""
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  if [ ${#files[@]} -gt 0 ]; then
    m=$(grep -hoE '^(URIs:|deb)[[:space:]]+https?://[^[:space:]]+/debian/?([[:space:]]|$)' "${files[@]}" 2>/dev/null \
        | awk '{print $2; exit}') || true
  fi
  echo "${m:-http://deb.debian.org/debian}"
}
