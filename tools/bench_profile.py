"""cProfile for a threaded program: ``python tools/bench_profile.py -o OUT.prof -m MODULE [ARGS...]``.

``python -m cProfile`` profiles the main thread only, and occystrap does its work in -j layer threads and -J image
threads, so its profile would show little but waiting. This runs the module with one cProfile.Profile in the main
thread and one in every thread started meanwhile (each profiler covers the thread that enabled it), and writes the
merged statistics to OUT.prof (pstats format, for ``python -m pstats`` or snakeviz). With ``--summary FILE`` it
also writes a text top-N (default 30) by cumulative and by own time; with ``--flamegraph FILE.svg`` an SVG flame
graph of every thread drawn from those statistics (tools/bench_flame.py, an approximation: see there).

The module's exit status (SystemExit) is kept. Works on Python 3.11, whose cProfile hooks each thread separately;
on 3.12+ only one profiler may be active at a time, so only the main thread is profiled there.
"""

import argparse
import cProfile
import io
import os
import pstats
import runpy
import sys
import threading

_profiles = []
_lock = threading.Lock()


def _profiled_run(original_run):
    def run(self):
        profile = cProfile.Profile()
        try:
            profile.enable()
        except ValueError:  # another profiler is active (Python 3.12+): leave this thread unprofiled
            return original_run(self)
        try:
            return original_run(self)
        finally:
            profile.disable()
            with _lock:
                _profiles.append(profile)
    return run


def summary(stats, top=30):
    """The text report: the top functions by cumulative time, then by own (total) time."""
    text = io.StringIO()
    stats.stream = text
    for key in ('cumulative', 'tottime'):
        text.write(f'=== top {top} by {key} time\n')
        stats.sort_stats(key).print_stats(top)
    return text.getvalue()


class _HardExit(SystemExit):
    """os._exit, turned into an exception so that the statistics are still written."""


def _raise_instead(code):
    raise _HardExit(code)


def profile_module(module, argv, out, summary_path=None, top=30, flamegraph=None):
    """Run module as __main__ with sys.argv = [module] + argv under the profilers; return its exit status.

    A module that leaves with os._exit (occystrap's command does, skipping interpreter teardown) gets SystemExit
    instead while it runs here.
    """
    threading.Thread.run = _profiled_run(threading.Thread.run)
    sys.argv = [module] + list(argv)
    os._exit = _raise_instead
    main_profile = cProfile.Profile()
    status = 0
    main_profile.enable()
    try:
        runpy.run_module(module, run_name='__main__', alter_sys=True)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        main_profile.disable()
        stats = pstats.Stats(main_profile)
        with _lock:
            for profile in _profiles:
                stats.add(profile)
        stats.dump_stats(out)
        if summary_path:
            with open(summary_path, 'w') as f:
                f.write(f'{len(_profiles) + 1} threads profiled\n')
                f.write(summary(stats, top))
        if flamegraph:
            try:
                from tools import bench_flame
            except ImportError:  # run as a script from tools/
                import bench_flame
            bench_flame.render(stats, flamegraph, f'{module} {" ".join(argv)}'[:150])
    return status


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after '-m MODULE' belongs to the module, as with python -m cProfile.
    if '-m' not in argv or argv.index('-m') + 1 >= len(argv):
        argv.append('--help')
        split = len(argv)
    else:
        split = argv.index('-m')
    parser = argparse.ArgumentParser(description='Profile every thread of a Python module run.',
                                     usage='%(prog)s -o OUT [--summary FILE] [--top N] [--flamegraph SVG] '
                                           '-m MODULE [ARGS...]')
    parser.add_argument('-o', '--out', required=True, help='pstats output file')
    parser.add_argument('--summary', help='also write a text top-N here')
    parser.add_argument('--top', type=int, default=30)
    parser.add_argument('--flamegraph', help='also write an SVG flame graph (from the cProfile data) here')
    args = parser.parse_args(argv[:split])
    return profile_module(argv[split + 1], argv[split + 2:], args.out, args.summary, args.top, args.flamegraph)


if __name__ == '__main__':
    sys.exit(main())
