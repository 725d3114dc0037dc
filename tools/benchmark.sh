#!/usr/bin/env bash
# Benchmark occystrap's main workflows over -j and -J with hyperfine; print a TSV (or JSON) table.
#
# Usage: tools/benchmark.sh [OPTIONS]
#
#   --registry HOST:PORT  source registry (plain HTTP) to use; default: localhost:5000 if a registry answers
#                         there, else a docker-registry of our own on a free port, storage in the cache
#   --workflows LIST      comma-separated, default all: single-pull single-tar single-push app-pull app-push
#                         bulk-quay-info multi-dir bulk-mirror resync
#   --mirror-repos N      repositories in the fleet bulk-mirror and resync copy (default 100, 10 with --quick)
#   --jobs LIST           -j values (default 1,4,8,16)
#   --image-jobs LIST     -J values for the multi-image workflows (default 1,3,6)
#   --runs N              timed runs per cell (default 3); --warmup N warm-up runs (default 1)
#   --quick               smoke run: tiny images, 1 run, no warm-up, -j 1,4, -J 3, 10 mirrored repositories
#   --json                print JSON instead of TSV
#   --latency MS          added round trip between the clients and every server (userspace delay proxy)
#   --bandwidth MBIT      per-connection throughput cap through the same proxy
#   --tls                 TLS registries with a generated CA, so HTTP/2 is negotiated (--ca-cert is passed)
#   --http1               also time occystrap with --no-http2 (tool occystrap-http1); use with --tls
#   --http2               also time occystrap with --http2 (tool occystrap-http2, HTTP/2 for metadata); with --tls
#   --baseline GIT_REF    also time that revision (tool baseline) and add baseline_mean_s and ratio columns
#   --peers               also time skopeo and occystrap 0.4.17 from PyPI (tools skopeo, occystrap-0.4.17);
#                         skopeo sync --src yaml of the same repositories for bulk-mirror and resync
#   --profile WORKFLOW    also run that workflow once under cProfile (all threads): .prof and top-30 .txt, and a
#                         flame graph of every thread (.svg): py-spy's where installed (the bench extra has it),
#                         else drawn from the cProfile data (tools/bench_flame.py, approximate)
#   --results DIR         where results go (default bench-results/<UTC timestamp>/ in the repository)
#
# The bulk memory curve (workflows curve-mirror and curve-quay-info; each cell run once under peakrss.py):
#   --memory-curve        peak RSS and time of bulk-mirror (registry to registry) and bulk-quay-info (through the
#                         Quay stand-in) for every -J of --curve-image-jobs over every --curve-repos fleet; chart
#                         memory-curve.png. Without --workflows only these run
#   --curve-repos LIST    repository counts (default 100,400; 10,20 with --quick), seeded once as memcurve-N/*
#   --curve-image-jobs LIST  -J values (default 1,3,6,12,24,32; 1,3 with --quick)
#
# On real services, seeding nothing into them (workflows remote-pull, remote-tar, remote-push, remote-quay-info;
# without --workflows, the ones these options make possible, and nothing is seeded):
#   --source registry://HOST/NAME:TAG   an existing image (repeatable): pulled to dir:// and tar:// and pushed to
#                         the local push registry, with occystrap's own credential and TLS sources (docker config,
#                         credential helpers, certs.d) and --ca-cert; --latency and --bandwidth do not apply
#   --ca-cert FILE        CA bundle for the remote-* workflows' TLS registries (occystrap's --ca-cert)
#   --quay-api URL        a Quay API (https://HOST/api/v1): info over --quay-org ORG (remote-quay-info)
#   --quay-org ORG        the organisation; --quay-registry HOST where its images are, if not the API's default
#   --rate-limit R        occystrap's --rate-limit for remote-quay-info; its 429 answers are counted per run
#                         (column throttled, from each run's --stats-file)
#
# Every cell is run once under tools/peakrss.py first (peak RSS, and a check that it works: a failing cell is
# reported loudly, gets status "failed", and the rest go on; the exit status is then 1), then timed with
# hyperfine, the output directory (and for pushes the push registry's storage) emptied before every run.
# Pushes go to a second local registry that is emptied before every run, so layers are really uploaded (a push
# within one registry would be a cross-repository mount). bulk-mirror copies the mirroring fleet into a fresh
# prefix of it every run; resync copies it again into a prefix its prepare step has filled, so nothing is left to
# copy. No --layer-cache is used. Columns:
#   tool workflow j J runs mean_s stddev_s min_s max_s peak_rss_mb mb_per_s [baseline_mean_s ratio] status
# mb_per_s is the compressed image bytes the workflow moves over the mean time; "-" means not applicable.
# Results directory: results.tsv, results.json, images.json, meta.json, chart.png (memory-curve.png), logs/.
# The charts name the run's date, revision and machine (meta.json) in their title and PNG metadata.
set -eEuo pipefail
# Whatever stops the run early says where, instead of leaving an empty table and a bare exit status.
trap 'echo "benchmark: FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=$root/tools
cache=${XDG_CACHE_HOME:-$HOME/.cache}/occystrap-bench

usage() {
  sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
  echo "benchmark: $*" >&2
  exit 2
}

registry='' json=0 quick=0 workflows='' jobs='' image_jobs='' runs='' warmup='' latency=0 bandwidth=0
mirror_repos='' tls=0 http1=0 http2=0 baseline='' peers=0 profile='' results=''
memory_curve=0 curve_repos='' curve_image_jobs=''
sources=() ca_cert='' quay_api='' quay_org='' quay_registry='' rate_limit=''
while [ $# -gt 0 ]; do
  case $1 in
    --registry) registry=${2:?--registry needs HOST:PORT}; shift ;;
    --workflows) workflows=${2:?--workflows needs a list}; shift ;;
    --jobs) jobs=${2:?--jobs needs a list}; shift ;;
    --image-jobs) image_jobs=${2:?--image-jobs needs a list}; shift ;;
    --mirror-repos) mirror_repos=${2:?--mirror-repos needs a number}; shift ;;
    --runs) runs=${2:?--runs needs a number}; shift ;;
    --warmup) warmup=${2:?--warmup needs a number}; shift ;;
    --quick) quick=1 ;;
    --json) json=1 ;;
    --latency) latency=${2:?--latency needs milliseconds}; shift ;;
    --bandwidth) bandwidth=${2:?--bandwidth needs Mbit/s}; shift ;;
    --tls) tls=1 ;;
    --http1) http1=1 ;;
    --http2) http2=1 ;;
    --baseline) baseline=${2:?--baseline needs a git revision}; shift ;;
    --peers) peers=1 ;;
    --profile) profile=${2:?--profile needs a workflow}; shift ;;
    --results) results=${2:?--results needs a directory}; shift ;;
    --memory-curve) memory_curve=1 ;;
    --curve-repos) curve_repos=${2:?--curve-repos needs a list}; shift ;;
    --curve-image-jobs) curve_image_jobs=${2:?--curve-image-jobs needs a list}; shift ;;
    --source) sources+=("${2:?--source needs registry://HOST/NAME:TAG}"); shift ;;
    --ca-cert) ca_cert=${2:?--ca-cert needs a file}; shift ;;
    --quay-api) quay_api=${2:?--quay-api needs a URL}; shift ;;
    --quay-org) quay_org=${2:?--quay-org needs an organisation}; shift ;;
    --quay-registry) quay_registry=${2:?--quay-registry needs HOST[:PORT]}; shift ;;
    --rate-limit) rate_limit=${2:?--rate-limit needs requests per second}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
  shift
done

number='^[0-9]+([.][0-9]+)?$'
[[ $latency =~ $number ]] || die "--latency wants milliseconds, got $latency"
[[ $bandwidth =~ $number ]] || die "--bandwidth wants Mbit/s, got $bandwidth"
if [ "$quick" -eq 1 ]; then
  scale=0.02 prefix=quick/ org=quickorg
  : "${jobs:=1,4}" "${image_jobs:=3}" "${runs:=1}" "${warmup:=0}" "${mirror_repos:=10}"
  : "${curve_repos:=10,20}" "${curve_image_jobs:=1,3}"
else
  scale=1 prefix='' org=benchorg
  : "${jobs:=1,4,8,16}" "${image_jobs:=1,3,6}" "${runs:=3}" "${warmup:=1}" "${mirror_repos:=100}"
  : "${curve_repos:=100,400}" "${curve_image_jobs:=1,3,6,12,24,32}"
fi
list='^[1-9][0-9]*(,[1-9][0-9]*)*$'
[[ $curve_repos =~ $list ]] || die "--curve-repos wants a comma-separated list of counts, got $curve_repos"
[[ $curve_image_jobs =~ $list ]] || die "--curve-image-jobs wants a comma-separated list, got $curve_image_jobs"
remote_default=''
[ "${#sources[@]}" -gt 0 ] && remote_default=remote-pull,remote-tar,remote-push
[ -n "$quay_api" ] && remote_default=${remote_default:+$remote_default,}remote-quay-info
[ "$memory_curve" -eq 1 ] && remote_default=curve-mirror,curve-quay-info${remote_default:+,$remote_default}
: "${workflows:=${remote_default:-all}}"
if [ -n "$quay_api" ] && [ -z "$quay_org" ]; then
  die '--quay-api needs --quay-org ORG'
fi
for source in "${sources[@]}"; do
  [[ $source == registry://*/* ]] || die "--source wants registry://HOST/NAME:TAG, got $source"
done
if [[ ,$workflows, =~ ,remote-(pull|tar|push), ]] && [ "${#sources[@]}" -eq 0 ]; then
  die 'the remote-pull, remote-tar and remote-push workflows need --source registry://HOST/NAME:TAG'
fi
if [[ ,$workflows, == *,remote-quay-info,* ]] && [ -z "$quay_api" ]; then
  die 'the remote-quay-info workflow needs --quay-api URL and --quay-org ORG'
fi
if [ -n "$ca_cert" ]; then
  [ -f "$ca_cert" ] || die "--ca-cert: no file $ca_cert"
  ca_cert=$(cd "$(dirname "$ca_cert")" && pwd)/$(basename "$ca_cert")
fi
[ -z "$rate_limit" ] || [[ $rate_limit =~ $number ]] || die "--rate-limit wants requests per second, got $rate_limit"
# Only remote workflows: nothing to seed; only the memory curve: only its fleets.
local_workflows=$(tr ',' '\n' <<<"$workflows" | grep -v '^remote-' || true)
seed_args=()
if [[ ,$workflows, == *,curve-* ]]; then
  seed_args+=(--curve-repos "$curve_repos")
  grep -qv '^curve-' <<<"$local_workflows" || seed_args+=(--curve-only)
fi
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive integer, got $runs"
[[ $warmup =~ ^[0-9]+$ ]] || die "--warmup wants an integer, got $warmup"
[[ $mirror_repos =~ ^[1-9][0-9]*$ ]] || die "--mirror-repos wants a positive integer, got $mirror_repos"
if [ -n "$registry" ] && [ "$tls" -eq 1 ]; then
  die '--tls starts its own TLS registries; it cannot be combined with --registry'
fi
if [ "$http1" -eq 1 ] && [ "$tls" -eq 0 ]; then
  echo 'benchmark: warning: without --tls every request is HTTP/1.1 anyway (HTTP/2 needs TLS here)' >&2
fi

# Measure raw transfers: no layer cache, whatever the caller's environment says; other settings are reported.
unset OCCYSTRAP_LAYER_CACHE
for name in $(compgen -e | grep '^OCCYSTRAP_' || true); do
  echo "benchmark: note: $name is set and applies to every occystrap run" >&2
done

venv=$("$tools/bootstrap.sh")
py=$venv/bin/python
for cmd in hyperfine jq skopeo docker-registry git; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is not installed (tools/bootstrap.sh should have installed it)"
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
# Not `$([ "$quick" -eq 1 ] && echo -quick)`: a substitution that exits 1 fails the assignment under set -e.
suffix=''
[ "$quick" -eq 0 ] || suffix=-quick
results=${results:-$root/bench-results/$stamp$suffix}
mkdir -p "$results/logs" "$cache"
results=$(cd "$results" && pwd)
work=$(mktemp -d "$cache/run.XXXXXX")
env_pid=''

cleanup() {
  local rc=$?
  if [ -n "$env_pid" ] && kill -0 "$env_pid" 2>/dev/null; then
    kill -TERM "$env_pid" 2>/dev/null || true
    wait "$env_pid" 2>/dev/null || true
  fi
  for log in "$work"/registry-*.log; do
    [ -f "$log" ] && cp "$log" "$results/logs/" 2>/dev/null
  done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- environment: registries, Quay stand-in, proxies -----------------------------------------------------------
env_args=(up --state "$work/state.json" --cache "$cache" --work "$work" --latency "$latency" --bandwidth "$bandwidth")
[ -n "$registry" ] && env_args+=(--registry "$registry")
[ "$tls" -eq 1 ] && env_args+=(--tls)
"$py" "$tools/bench_env.py" "${env_args[@]}" 2>"$results/logs/env.log" &
env_pid=$!
for _ in $(seq 600); do
  [ -f "$work/state.json" ] && break
  if ! kill -0 "$env_pid" 2>/dev/null; then
    cat "$results/logs/env.log" >&2
    die 'the benchmark environment did not start'
  fi
  sleep 0.1
done
[ -f "$work/state.json" ] || die 'the benchmark environment did not start within 60 s'
echo "benchmark: source registry $(jq -r .source.host "$work/state.json")," \
  "push registry $(jq -r .push.host "$work/state.json"), Quay API $(jq -r .quay.api "$work/state.json")" >&2

if [ -n "$local_workflows" ]; then
  "$py" "$tools/bench_env.py" seed --state "$work/state.json" --cache "$cache" --scale "$scale" --prefix "$prefix" \
    --org "$org" --mirror-repos "$mirror_repos" "${seed_args[@]}" --out "$results/images.json"
else
  echo '{}' >"$results/images.json"
fi

# --- tools to compare ------------------------------------------------------------------------------------------
tool_list=occystrap
plan_args=(--state "$work/state.json" --images "$results/images.json" --out "$work/out" --python "$py"
           --tools-dir "$tools" --jobs "$jobs" --image-jobs "$image_jobs" --curve-repos "$curve_repos"
           --curve-image-jobs "$curve_image_jobs")
[ "$http1" -eq 1 ] && tool_list+=,occystrap-http1
if [ "${#sources[@]}" -gt 0 ] || [ -n "$quay_api" ]; then
  jq -n --arg ca "$ca_cert" --arg api "$quay_api" --arg org "$quay_org" --arg registry "$quay_registry" \
    --arg rate "$rate_limit" --arg stats "$results/stats" '$ARGS.positional as $sources
    | {sources: $sources, ca_cert: (if $ca == "" then null else $ca end),
       quay: (if $api == "" then null else {api: $api, org: $org,
                                            registry: (if $registry == "" then null else $registry end)} end),
       rate_limit: (if $rate == "" then null else ($rate | tonumber) end), stats_dir: $stats}' \
    --args "${sources[@]}" >"$results/remote.json"
  plan_args+=(--remote "$results/remote.json")
fi
[ "$http2" -eq 1 ] && tool_list+=,occystrap-http2

make_venv() {  # make_venv DIR PIP-ARGS...: a venv with those packages, built once (stamp file)
  local dir=$1
  shift
  [ -f "$dir/.bench-installed" ] && return 0
  rm -rf "$dir"
  if "${PYTHON:-python3}" -m venv "$dir" >&2 && "$dir/bin/python" -m pip install -q "$@" >>"$results/logs/pip.log" 2>&1
  then
    touch "$dir/.bench-installed"
  else
    tail -n 5 "$results/logs/pip.log" >&2
    return 1
  fi
}

if [ -n "$baseline" ]; then
  sha=$(git -C "$root" rev-parse --verify "$baseline^{commit}") || die "--baseline: no revision $baseline"
  bvenv=$cache/baseline-$sha
  if [ ! -f "$bvenv/.bench-installed" ]; then
    echo "benchmark: installing baseline $baseline ($sha) into $bvenv" >&2
    bsrc=$work/baseline-src
    mkdir -p "$bsrc"
    git -C "$root" archive "$sha" | tar -x -C "$bsrc"
  fi
  if make_venv "$bvenv" "$work/baseline-src"; then
    tool_list+=,baseline
    plan_args+=(--baseline-python "$bvenv/bin/python")
  else
    echo "benchmark: FAILED to install baseline $baseline; its rows are left out" >&2
  fi
fi
if [ "$peers" -eq 1 ]; then
  tool_list+=,skopeo
  ovenv=$cache/occystrap-0.4.17
  if make_venv "$ovenv" occystrap==0.4.17; then
    tool_list+=,occystrap-0.4.17
    plan_args+=(--old-occystrap "$ovenv/bin/occystrap")
    # Black box: only its help text says whether it has -J.
    if "$ovenv/bin/occystrap" --help 2>/dev/null | grep -qE -- '(^|[ ,])-J([ ,]|$)'; then
      plan_args+=(--old-has-image-jobs)
    fi
  else
    echo 'benchmark: FAILED to install occystrap==0.4.17; its rows are left out' >&2
  fi
fi

"$py" "$tools/bench_plan.py" "${plan_args[@]}" --tools "$tool_list" --workflows "$workflows" >"$work/cells.jsonl" \
  || die 'could not plan the grid (see the message above)'
cells=$(wc -l <"$work/cells.jsonl")
curve_note=''
[[ ,$workflows, == *,curve-* ]] && curve_note="; memory curve over $curve_repos repositories at -J $curve_image_jobs"
echo "benchmark: $cells cells ($tool_list; workflows $workflows; -j $jobs; -J $image_jobs$curve_note; $runs runs," \
  "$warmup warm-up; latency ${latency} ms, bandwidth ${bandwidth} Mbit/s per connection)" >&2

# --- the grid -------------------------------------------------------------------------------------------------
rows=$work/rows.jsonl
: >"$rows"
failed=0 n=0
while IFS= read -r cell <&3; do
  n=$((n + 1))
  tool=$(jq -r .tool <<<"$cell")
  workflow=$(jq -r .workflow <<<"$cell")
  label="$tool $workflow$(jq -r '(if .repos then " repos=\(.repos)" else "" end)
    + (if .image then " \(.image)" else "" end)' <<<"$cell") j=$(jq -r '.j // "-"' <<<"$cell") J=$(jq -r '.J // "-"' <<<"$cell")"
  command=$(jq -r .command <<<"$cell")
  prepare=$(jq -r .prepare <<<"$cell")
  slug=$(tr -c 'A-Za-z0-9=.-' _ <<<"$label" | sed 's/_*$//')
  log=$results/logs/$slug.log
  echo "benchmark: [$n/$cells] $label" >&2
  printf '%s\n' "$command" >"$log"
  error=null hyperfine_json=null rss_json=null
  set +e
  # A prepare step can fail (resync's fills the destination): that fails the cell, not the run.
  if bash -c "$prepare" </dev/null >>"$log" 2>&1; then
    "$py" "$tools/peakrss.py" --out "$work/rss.json" -- bash -c "$command" </dev/null >/dev/null 2>>"$log"
    rc=$?
  else
    rc=$?
    echo "benchmark: prepare failed: $prepare" >>"$log"
  fi
  set -e
  [ -f "$work/rss.json" ] && rss_json=$(cat "$work/rss.json") && rm -f "$work/rss.json"
  if [ "$rc" -ne 0 ]; then
    message="exit $rc: $(grep -v '^ *$' "$log" | tail -n 2 | tr '\n' ' ' | cut -c1-400)"
    error=$(jq -Rn --arg m "$message" '$m')
    echo "benchmark: FAILED: $label: $message" >&2
  elif [ "$(jq -r '.once // false' <<<"$cell")" = true ]; then
    :   # the memory curve: the one run under peakrss.py is the measurement
  elif ! hyperfine --runs "$runs" --warmup "$warmup" --prepare "$prepare" --command-name "$label" \
      --style basic --export-json "$work/hyperfine.json" "$command" </dev/null >>"$log" 2>&1; then
    message="failed while timed: $(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-400)"
    error=$(jq -Rn --arg m "$message" '$m')
    echo "benchmark: FAILED: $label: $message" >&2
  else
    hyperfine_json=$(cat "$work/hyperfine.json")
    cp "$work/hyperfine.json" "$results/logs/$slug.hyperfine.json"
  fi
  [ "$error" = null ] || failed=$((failed + 1))
  stats_dir=$(jq -r '.stats_dir // ""' <<<"$cell")
  if [ -n "$stats_dir" ]; then
    # Every run's --stats-file: 429 answers per run, and the bytes the workflow moved (remote images' sizes are
    # not known beforehand).
    run_stats=("$stats_dir"/run-*.json)
    counts='{"throttled": null, "bytes": null}'
    if [ -f "${run_stats[0]}" ]; then
      counts=$(jq -s -c '{throttled: ((map(.throttled) | add) / length * 10 | round / 10),
                          bytes: (map(.downloaded) | max)}' "${run_stats[@]}")
    fi
    cell=$(jq -c --argjson c "$counts" '. + {throttled: $c.throttled}
      + (if .workflow == "remote-quay-info" then {} else {bytes: $c.bytes} end)' <<<"$cell")
  fi
  jq -c -L "$tools" --argjson h "$hyperfine_json" --argjson rss "$rss_json" --argjson error "$error" \
    'include "bench"; row($h; $rss; $error)' <<<"$cell" >>"$rows"
  rm -f "$work/hyperfine.json"
done 3<"$work/cells.jsonl"

jq -s -L "$tools" 'include "bench"; with_baseline | ordered' "$rows" >"$results/results.json"
jq -r -L "$tools" 'include "bench"; tsv' "$results/results.json" >"$results/results.tsv"

# --- profile --------------------------------------------------------------------------------------------------
if [ -n "$profile" ]; then
  pj=${jobs%%,*} pJ=${image_jobs%%,*}
  [[ ,$jobs, == *,4,* ]] && pj=4
  [[ ,$image_jobs, == *,3,* ]] && pJ=3
  spy_args=()
  [ -x "$venv/bin/py-spy" ] && spy_args=(--py-spy "$venv/bin/py-spy")
  "$py" "$tools/bench_plan.py" "${plan_args[@]}" --tools occystrap --workflows "$profile" --jobs "$pj" \
    --image-jobs "$pJ" --profile-out "$results/profile-$profile.prof" "${spy_args[@]}" >"$work/profile.jsonl" \
    || die "--profile: cannot plan $profile"
  bash -c "$(jq -r .prepare "$work/profile.jsonl")"
  echo "benchmark: profiling $profile with -j $pj (-J $pJ for multi-image workflows)" >&2
  if bash -c "$(jq -r .profile_command "$work/profile.jsonl")" </dev/null >/dev/null 2>"$results/logs/profile.log"; then
    echo "benchmark: profile: $results/profile-$profile.prof, top 30: $results/profile-$profile.txt" >&2
  else
    echo "benchmark: FAILED: profiling $profile; see $results/logs/profile.log" >&2
    failed=$((failed + 1))
  fi
  flame=$(jq -r '.flame_command // ""' "$work/profile.jsonl")
  if [ -n "$flame" ]; then
    bash -c "$(jq -r .prepare "$work/profile.jsonl")"
    if ! bash -c "$flame" </dev/null >/dev/null 2>"$results/logs/py-spy.log"; then
      # py-spy needs ptrace (root, or kernel.yama.ptrace_scope 0): fall back to the graph from the cProfile data.
      echo "benchmark: py-spy failed (see $results/logs/py-spy.log); flame graph from the cProfile data" >&2
      "$py" "$tools/bench_flame.py" "$results/profile-$profile.prof" -o "$results/profile-$profile.svg" \
        --title "$profile (from cProfile)" 2>>"$results/logs/profile.log" || true
    fi
  fi
  [ -f "$results/profile-$profile.svg" ] && echo "benchmark: flame graph: $results/profile-$profile.svg" >&2
fi

# --- what the registries saw, and the run's context -----------------------------------------------------------
protocols() {  # requests per protocol in a registry access log, as a JSON object ({} without a log)
  { if [ -f "$1" ]; then grep -oE '"[A-Z]+ [^ ]+ HTTP/[0-9.]+"' "$1" || true; fi; } | awk '{print $3}' | tr -d '"' \
    | sort | uniq -c \
    | jq -Rn '[inputs | capture(" *(?<n>[0-9]+) (?<p>.+)") | {key: .p, value: (.n | tonumber)}] | from_entries'
}
source_protocols=$(protocols "$(jq -r '.source.log // ""' "$work/state.json")")
push_protocols=$(protocols "$work/registry-push.log")
if [ "$tls" -eq 1 ]; then
  echo "benchmark: requests by protocol: source registry $(jq -c . <<<"$source_protocols")," \
    "push registry $(jq -c . <<<"$push_protocols")" >&2
fi
machine() {  # "2 CPUs (AMD EPYC 7B13), 24 GiB, Linux 6.18.0": what the chart and meta.json name
  local model memory
  model=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo 2>/dev/null | head -n 1)
  memory=$(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null)
  echo "$(nproc) CPUs${model:+ ($model)}${memory:+, $memory}, Linux $(uname -r)"
}
jq -n --arg date "$stamp" --arg rev "$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)" \
  --arg dirty "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null | wc -l)" \
  --arg workflows "$workflows" --arg jobs "$jobs" --arg image_jobs "$image_jobs" --arg tools "$tool_list" \
  --argjson mirror_repos "$mirror_repos" --arg curve_repos "$curve_repos" --arg curve_image_jobs "$curve_image_jobs" \
  --argjson remote "$(cat "$results/remote.json" 2>/dev/null || echo null)" \
  --argjson runs "$runs" --argjson warmup "$warmup" --argjson quick "$quick" --arg baseline "$baseline" \
  --arg machine "$(machine)" --arg nproc "$(nproc)" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg kernel "$(uname -r)" \
  --arg hyperfine "$(hyperfine --version)" --arg skopeo "$(skopeo --version)" \
  --arg python "$("$py" --version 2>&1)" --slurpfile state "$work/state.json" \
  --argjson source_protocols "$source_protocols" --argjson push_protocols "$push_protocols" \
  '{date: $date, revision: $rev, uncommitted_files: ($dirty | tonumber), workflows: $workflows, jobs: $jobs,
    image_jobs: $image_jobs, mirror_repos: $mirror_repos, curve_repos: $curve_repos,
    curve_image_jobs: $curve_image_jobs, tools: $tools, runs: $runs, warmup: $warmup,
    quick: ($quick == 1),
    baseline: (if $baseline == "" then null else $baseline end), cpus: ($nproc | tonumber),
    machine: $machine, load_average_at_end: $load, kernel: $kernel, hyperfine: $hyperfine, skopeo: $skopeo, python: $python,
    tls: $state[0].tls, latency_ms: $state[0].latency_ms, bandwidth_mbit: $state[0].bandwidth_mbit,
    source_registry: $state[0].source.direct, source_registry_started: $state[0].source.started,
    requests_by_protocol: {source: $source_protocols, push: $push_protocols}, remote: $remote}' >"$results/meta.json"

if jq -e 'any(.[]; (.workflow | startswith("curve-") | not) and .status == "ok")' "$results/results.json" >/dev/null \
    && ! "$py" "$tools/bench_plot.py" "$results/results.json" -o "$results/chart.png" 2>>"$results/logs/plot.log"; then
  echo "benchmark: warning: no chart (see $results/logs/plot.log)" >&2
fi
if jq -e 'any(.[]; (.workflow | startswith("curve-")) and .status == "ok")' "$results/results.json" >/dev/null \
    && ! "$py" "$tools/bench_plot.py" "$results/results.json" --memory-curve -o "$results/memory-curve.png" \
      2>>"$results/logs/plot.log"; then
  echo "benchmark: warning: no memory curve chart (see $results/logs/plot.log)" >&2
fi

if [ "$json" -eq 1 ]; then
  cat "$results/results.json"
else
  cat "$results/results.tsv"
fi
echo "benchmark: results in $results" >&2
if [ "$failed" -gt 0 ]; then
  echo "benchmark: $failed cell(s) FAILED; see the status column and $results/logs/" >&2
  exit 1
fi
