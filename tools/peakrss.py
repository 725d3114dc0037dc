"""Run a command and report its peak resident set size: the memory column of the benchmark.

hyperfine measures time only, so benchmark.sh runs each cell once more under this wrapper. The peak is
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after the command (and everything it waited for) ended: the largest RSS
of any one process of the command, which for ``sh -c 'python -m occystrap ...'`` is occystrap's.

Usage::

    python tools/peakrss.py --out RESULT.json -- COMMAND [ARGS...]

The command's stdin, stdout and stderr are inherited; RESULT.json gets
``{"exit_code": N, "peak_rss_kb": N, "wall_s": F}``, and the wrapper exits with the command's status
(128 + signal number when a signal ended it).
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(argv):
    """Run argv to completion; return {'exit_code', 'peak_rss_kb', 'wall_s'} (ru_maxrss is in KiB on Linux)."""
    started = time.monotonic()
    returncode = subprocess.call(argv)
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    exit_code = returncode if returncode >= 0 else 128 - returncode
    return {'exit_code': exit_code, 'peak_rss_kb': usage.ru_maxrss, 'wall_s': round(wall, 4)}


def main(argv=None):
    parser = argparse.ArgumentParser(description='Run a command and record its peak RSS.')
    parser.add_argument('--out', required=True, help='JSON file for exit_code, peak_rss_kb and wall_s')
    parser.add_argument('command', nargs=argparse.REMAINDER, help='-- COMMAND [ARGS...]')
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if not command:
        parser.error('no command given')
    try:
        result = measure(command)
    except OSError as exc:
        print(f'peakrss: cannot run {command[0]}: {exc}', file=sys.stderr)
        result = {'exit_code': 127, 'peak_rss_kb': 0, 'wall_s': 0.0}
    with open(args.out, 'w') as f:
        json.dump(result, f)
    return result['exit_code']


if __name__ == '__main__':
    sys.exit(main())
