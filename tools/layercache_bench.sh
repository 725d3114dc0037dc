#!/usr/bin/env bash
# Measure what --layer-cache saves: pushing a `docker save` tarball of the benchmark's app image (uncompressed
# layers, so every layer must be compressed before its digest is known), cold, then the identical push again
# without the cache and with it; then the same with a rewriting filter (-f normalize-timestamps), where the cache
# can only save the compression and upload, not the rewrite. Prints hyperfine's tables.
#
# Usage: tools/layercache_bench.sh [--scale F] [--runs N]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=$root/tools
cache=${XDG_CACHE_HOME:-$HOME/.cache}/occystrap-bench
scale=1 runs=3
while [ $# -gt 0 ]; do
  case $1 in
    --scale) scale=${2:?--scale needs a number}; shift ;;
    --runs) runs=${2:?--runs needs a number}; shift ;;
    -h|--help) sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "layercache_bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

venv=$("$tools/bootstrap.sh")
py=$venv/bin/python
mkdir -p "$cache"
work=$(mktemp -d "$cache/layercache.XXXXXX")
env_pid=''
cleanup() {
  local rc=$?
  if [ -n "$env_pid" ]; then
    kill -TERM "$env_pid" 2>/dev/null || true
    wait "$env_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$py" "$tools/bench_env.py" up --state "$work/state.json" --cache "$cache" --work "$work" 2>"$work/env.log" &
env_pid=$!
for _ in $(seq 600); do
  [ -f "$work/state.json" ] && break
  kill -0 "$env_pid" 2>/dev/null || { cat "$work/env.log" >&2; exit 1; }
  sleep 0.1
done
prefix=''
[ "$scale" = 1 ] || prefix=scaled/
"$py" "$tools/bench_env.py" seed --state "$work/state.json" --cache "$cache" --scale "$scale" --prefix "$prefix" \
  --out "$work/images.json" >&2
src=$(jq -r .source.host "$work/state.json")
dst=$(jq -r .push.host "$work/state.json")
storage=$(jq -r .push.storage "$work/state.json")
app="${prefix}bench/app:latest"

occy=("$venv/bin/occystrap" --insecure)
archive=$work/app.tar
skopeo copy -q --src-tls-verify=false "docker://$src/$app" "docker-archive:$archive:bench/app:latest"
cachefile=$work/layers.json
q() { printf '%q ' "$@"; }

measure() {  # measure LABEL PROCESS-ARGS...: cold push, then repeats without and with the cache
  local label=$1
  shift
  rm -f "$cachefile"
  # Cold: empty destination, no cache entries. Warm runs start from what one cold push with the cache left behind.
  hyperfine --runs "$runs" --warmup 0 \
    --prepare "rm -rf $(q "$storage")/docker $(q "$cachefile")" \
    -n "$label: first push (cold)" "$(q "${occy[@]}" --layer-cache "$cachefile" "$@")"
  "${occy[@]}" --layer-cache "$cachefile" "$@" 2>/dev/null
  hyperfine --runs "$runs" --warmup 1 \
    -n "$label: repeat push, no cache" "$(q "${occy[@]}" "$@")" \
    -n "$label: repeat push, --layer-cache" "$(q "${occy[@]}" --layer-cache "$cachefile" "$@")"
}

measure 'docker save tarball' process "tar://$archive" "registry://$dst/cached/app:latest"
measure 'normalize-timestamps' process "registry://$src/$app" "registry://$dst/cached/app:norm" -f normalize-timestamps
