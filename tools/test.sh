#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: install what is needed, lint, then run pytest.
# Extra arguments go to pytest (e.g. tools/test.sh -k registry).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$(tools/bootstrap.sh)
export PATH=$venv/bin:$PATH

echo '== flake8'
flake8 --max-line-length=120 occystrap tests tools
echo '== shellcheck'
shellcheck tools/*.sh .ci/run
echo '== pytest'
set +e
# Two workers: most tests wait on real services, and CI has two cores.
python -m pytest -q -p no:cacheprovider -n "${OCCYSTRAP_TEST_WORKERS:-2}" "$@"
rc=$?
set -e
# pytest's 5 means no test ran: that is a failure, not a pass.
if [ "$rc" -eq 5 ]; then
  echo 'pytest collected no tests' >&2
  exit 1
fi
exit "$rc"
