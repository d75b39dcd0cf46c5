# Shell helpers the build scripts share; sourced, not run.

# up_to_date OUTPUT INPUT...: OUTPUT exists and is newer than every INPUT.
up_to_date() {
  local out=$1
  shift
  [ -e "$out" ] || return 1
  local f
  for f in "$@"; do [ "$f" -nt "$out" ] && return 1; done
  return 0
}
