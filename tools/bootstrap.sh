#!/usr/bin/env bash
# Install everything occystrap's tests and benchmark need on a Debian machine, then print the venv path.
# Idempotent: a second run only checks. Runs as root (or with sudo available for apt-get).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${OCCYSTRAP_VENV:-$root/.venv}
debs=(docker-registry skopeo podman hyperfine jq shellcheck umoci runc uidmap git golang-docker-credential-helpers pass gnupg tmux)
cmds=(docker-registry skopeo podman hyperfine jq shellcheck umoci runc newuidmap git docker-credential-pass pass gpg tmux)

missing=()
sudo=()
for i in "${!cmds[@]}"; do
  command -v "${cmds[$i]}" >/dev/null 2>&1 || missing+=("${debs[$i]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo 'bootstrap: installing python3-venv' >&2
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq python3-venv python3-pip >&2
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv" >&2
  "$python" -m venv "$venv"
fi
stamp=$venv/.occystrap-installed
# The editable install is a plain path entry (editable_mode=compat): setuptools' default import hook would cost every
# command ~25 ms of start-up (importing pathlib, re and importlib.util before anything else).
recipe='editable_mode=compat [test,bench]'
if [ ! -f "$stamp" ] || [ "$root/setup.cfg" -nt "$stamp" ] || [ "$(cat "$stamp")" != "$recipe" ]; then
  echo 'bootstrap: installing occystrap and its test/bench dependencies into the venv' >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  log=$(mktemp)
  # compat is marked transitional by setuptools; should a future setuptools drop it, the default mode still works.
  if ! "$venv/bin/python" -m pip install -q --config-settings editable_mode=compat -e "${root}[test,bench]" \
      >"$log" 2>&1; then
    echo 'bootstrap: compat editable install failed; using the default editable mode' >&2
    "$venv/bin/python" -m pip install -q -e "${root}[test,bench]" >&2
  fi
  rm -f "$log"
  echo "$recipe" > "$stamp"
fi
# Byte-compile the package: with PYTHONDONTWRITEBYTECODE set (as on some CI machines) an editable install would
# otherwise recompile every module on every run, ~60 ms of each command the benchmark times.
"$venv/bin/python" -m compileall -q "$root/occystrap" >/dev/null
echo "$venv"
