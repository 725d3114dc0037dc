#!/usr/bin/env bash
# How long `occystrap info quay://ORG` takes when every Quay API request costs a round trip.
#
# Starts a docker-registry and the Quay API stand-in (tools/quay_standin.py, which holds every request
# --delay-ms before answering) on free loopback ports, seeds COUNT repositories cheaply (one tiny image copied
# with skopeo, the others made by cross-repository blob mounts and a manifest PUT), then times
# `occystrap info` over the organisation at the default -J/-j and with -J 1 (and -J 6). One request after
# another would cost one delay per repository; concurrent tag checks should cost a small multiple of the
# delay per page of 100 repositories.
#
# Usage: tools/quay_latency.sh [--delay-ms MS] [--count N] [--page-size N] [--runs N]
set -euo pipefail

delay_ms=50
count=100
page_size=100
runs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --delay-ms) delay_ms=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --page-size) page_size=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | cut -c3-; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$root/.venv/bin/python
if [ ! -x "$py" ]; then
  echo "no virtualenv at $root/.venv: run tools/bootstrap.sh first" >&2
  exit 1
fi
for tool in /usr/bin/docker-registry skopeo jq curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
export PYTHONPATH=$root

work=$(mktemp -d "${TMPDIR:-/tmp}/quay-latency.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for URL: until it answers (any HTTP status), or fail after 15 s
  for _ in $(seq 150); do
    if curl -s -o /dev/null "$1"; then
      return 0
    fi
    sleep 0.1
  done
  echo "$1 did not answer" >&2
  return 1
}

# --- registry
port=$(free_port)
registry=127.0.0.1:$port
cat >"$work/registry.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $work/storage}
  maintenance: {uploadpurging: {enabled: false}}
http: {addr: $registry, secret: quay-latency}
EOF
/usr/bin/docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=("$!")
wait_for "http://$registry/v2/"

# --- seed: one image with skopeo, then COUNT-1 more repositories sharing its blobs
"$py" - "$work/layout" <<'EOF'
import sys
from tests.services import build_oci_layout
build_oci_layout(sys.argv[1], layers=[{'etc/hello.txt': b'hello\n'}, {'etc/motd': b'quay latency\n'}])
EOF
skopeo --insecure-policy copy -q --dest-tls-verify=false --dest-no-creds \
  "oci:$work/layout" "docker://$registry/org/app-000:latest"
seed_started=$(date +%s.%N)
"$py" - "$registry" "$count" "$work/quay.json" <<'EOF'
import concurrent.futures
import json
import sys

import httpx

host, count, data_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
OCI = 'application/vnd.oci.image.manifest.v1+json'
with httpx.Client(base_url='http://' + host, timeout=30) as client:
    first = client.get('/v2/org/app-000/manifests/latest', headers={'Accept': OCI})
    first.raise_for_status()
    doc = json.loads(first.content)
    digests = [doc['config']['digest']] + [layer['digest'] for layer in doc['layers']]

    def one(i):
        name = 'org/app-%03d' % i
        for digest in digests:
            mounted = client.post('/v2/%s/blobs/uploads/' % name, params={'mount': digest, 'from': 'org/app-000'})
            assert mounted.status_code == 201, mounted.text
        pushed = client.put('/v2/%s/manifests/latest' % name, content=first.content,
                            headers={'Content-Type': first.headers['Content-Type']})
        assert pushed.status_code == 201, pushed.text

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(1, count)))
    tag = {'manifest_digest': first.headers['Docker-Content-Digest'],
           'size': sum(layer['size'] for layer in doc['layers'])}
    repositories = {'app-%03d' % i: {'description': '', 'tags': {'latest': tag}} for i in range(count)}
with open(data_path, 'w') as f:
    json.dump({'org': repositories}, f)
EOF
seed_seconds=$(awk -v a="$seed_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')

# --- two Quay API stand-ins: one holding every request --delay-ms, and a twin without delay so that the time the
# delay adds can be told apart from local processing. They answer from a static copy of what the registry holds
# (written by the seeding step) rather than asking the registry on every request, so the API costs the delay and
# little else, as a remote API does; the images themselves are still pulled from the registry.
start_standin() {  # start_standin DELAY_MS NAME: prints the API base URL
  "$py" "$root/tools/quay_standin.py" --data "$work/quay.json" --delay-ms "$1" --page-size "$page_size" \
    >"$work/$2.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 150); do
    grep -qs '^listening ' "$work/$2.log" && break
    sleep 0.1
  done
  local url
  url=$(sed -n 's/^listening //p' "$work/$2.log")
  if [ -z "$url" ]; then
    echo "the Quay stand-in did not start:" >&2
    cat "$work/$2.log" >&2
    exit 1
  fi
  echo "$url/api/v1"
}
start_standin "$delay_ms" slow >"$work/slow.url"
start_standin 0 fast >"$work/fast.url"
source_uri="quay://org?api=$(cat "$work/slow.url")&registry=$registry&insecure=true"
fast_uri="quay://org?api=$(cat "$work/fast.url")&registry=$registry&insecure=true"

seconds_since() {
  awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }'
}

best() { sort -n | head -1; }
median() { sort -n | sed -n "$(((runs + 1) / 2))p"; }

resolve() {  # resolve URI J: "SECONDS PAGES" for QuayInput.references() in-process at -J J (default -j)
  "$py" - "$1" "$2" <<'EOF'
import sys
import time

from occystrap.pipeline import RunContext, build_input
from occystrap.settings import Settings
from occystrap.uris import parse_uri

ctx = RunContext(Settings(image_parallel=int(sys.argv[2])))
try:
    source = build_input(parse_uri(sys.argv[1], 'input'), ctx)
    started = time.monotonic()
    refs = source.references()
    print('%.3f %d %d' % (time.monotonic() - started, source.api.pages, len(refs)))
finally:
    ctx.close()
EOF
}

# --- measure
echo "repositories: $count (seeded in ${seed_seconds}s), API delay: ${delay_ms} ms per request, page size: $page_size"
printf '%-11s  %-15s  %-29s  %s\n' '' 'info (s)' 'quay resolution only (s)' 'delays'
printf '%-11s  %6s %8s  %9s %9s %9s  %6s\n' '-J' 'best' 'median' 'no delay' 'delay' 'added' 'paid'
for jobs in 3 1 6; do
  info_times=() fast_times=() slow_times=()
  for _ in $(seq "$runs"); do
    started=$(date +%s.%N)
    "$py" -m occystrap -J "$jobs" -O json info "$source_uri" >"$work/info.json" 2>"$work/info.log" || {
      echo "occystrap -J $jobs info failed:" >&2
      cat "$work/info.log" >&2
      exit 1
    }
    info_times+=("$(seconds_since "$started")")
    described=$(jq length "$work/info.json")
    if [ "$described" -ne "$count" ]; then
      echo "occystrap -J $jobs info described $described images, not $count" >&2
      exit 1
    fi
    read -r seconds pages _ < <(resolve "$fast_uri" "$jobs")
    fast_times+=("$seconds")
    read -r seconds pages _ < <(resolve "$source_uri" "$jobs")
    slow_times+=("$seconds")
  done
  fast=$(printf '%s\n' "${fast_times[@]}" | best)
  slow=$(printf '%s\n' "${slow_times[@]}" | best)
  label=$jobs
  [ "$jobs" = 3 ] && label='3 (default)'
  awk -v l="$label" -v ib="$(printf '%s\n' "${info_times[@]}" | best)" \
      -v im="$(printf '%s\n' "${info_times[@]}" | median)" -v f="$fast" -v s="$slow" -v d="$delay_ms" 'BEGIN {
    printf "%-11s  %6.2f %8.2f  %9.2f %9.2f %9.2f  %6.1f\n", l, ib, im, f, s, s - f, (s - f) * 1000 / d }'
done
awk -v n="$count" -v d="$delay_ms" -v p="$pages" -v r="$runs" 'BEGIN {
  printf "API pages: %s. Resolution times are the best of %d runs, in-process; delays paid = added / delay.\n", p, r
  printf "One request after another would pay %d delays (%.2f s): one per page, one tag check per repository.\n",
    p + n, (p + n) * d / 1000 }'
