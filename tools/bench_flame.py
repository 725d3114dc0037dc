"""A flame graph (SVG) from cProfile statistics, for when py-spy is not installed.

Usage::

    python tools/bench_flame.py PROFILE.prof -o PROFILE.svg [--title TEXT] [--min-width F]

cProfile does not record stacks, only per-function totals and, for every function, how much of its time came
through each caller (the caller/callee edges ``pstats`` keeps). This draws the call tree those edges imply: the
roots are the functions nobody called inside the profile (each thread's entry: ``Thread.run``, ``run_module``),
a function's box is as wide as its cumulative time, and its children are its callees, each as wide as the time
the callee spent when called from it. Where a function is called from several places, what it calls is shared
out in proportion to the time each caller's call took (cProfile cannot say which caller's call did what), so
deep frames of a function called from many places are an approximation; recursion is cut where a function
appears again on its own stack. Every thread's roots sit side by side, so the graph covers every thread (their
times add up: the width is CPU-and-wait time of all threads, not wall time). py-spy's sampled flame graph is
exact where this is approximate; the benchmark uses py-spy when it is installed.

Frames narrower than ``--min-width`` (a fraction of the whole, default 0.002) are left out. Every frame has a
``<title>`` (shown on hover) with the function, its file and line, and its time.
"""

import argparse
import hashlib
import os
import pstats
import sys
from xml.sax.saxutils import escape

WIDTH = 1200
ROW = 16
MAX_DEPTH = 80
FONT = 11


def label(func):
    """'name (file.py:12)' for a pstats key (filename, line, name); built-ins keep their '<method ...>' name."""
    filename, line, name = func
    if filename == '~':
        return name
    return f'{name} ({os.path.basename(filename)}:{line})'


def call_tree(stats, min_fraction=0.002):
    """The approximate call tree of pstats.Stats: (total seconds, [root nodes]); a node is [func, seconds, kids]."""
    table = stats.stats
    callees = {}
    for func, (_, _, _, _, callers) in table.items():
        for caller, edge in callers.items():
            callees.setdefault(caller, []).append((func, edge[3]))
    roots = [(func, entry[3]) for func, entry in table.items() if not entry[4]]
    total = sum(seconds for _, seconds in roots) or 1e-9
    cutoff = total * min_fraction

    def grow(func, seconds, stack, depth):
        node = [func, seconds, []]
        if depth >= MAX_DEPTH or seconds < cutoff:
            return node
        own_total = table[func][3] or 1e-9
        share = min(1.0, seconds / own_total)     # this caller's part of the function's time
        kids = [(callee, edge_seconds * share) for callee, edge_seconds in callees.get(func, ())
                if callee not in stack]
        inside = sum(s for _, s in kids)
        if inside > seconds > 0:                  # the approximation may promise more than the box holds
            kids = [(callee, s * seconds / inside) for callee, s in kids]
        for callee, kid_seconds in sorted(kids, key=lambda k: -k[1]):
            if kid_seconds >= cutoff:
                node[2].append(grow(callee, kid_seconds, stack | {callee}, depth + 1))
        return node

    nodes = [grow(func, seconds, {func}, 0) for func, seconds in sorted(roots, key=lambda r: -r[1])]
    return total, [n for n in nodes if n[1] >= cutoff]


def _colour(name):
    digest = hashlib.sha1(name.encode()).digest()
    return f'rgb({205 + digest[0] % 50},{80 + digest[1] % 120},{digest[2] % 60})'


def render(stats, out, title='flame graph', min_fraction=0.002):
    """Write the SVG flame graph of pstats.Stats `stats` to `out`; returns the number of frames drawn."""
    total, roots = call_tree(stats, min_fraction)
    frames = []

    def place(node, x, depth):
        func, seconds, kids = node
        frames.append((x, depth, seconds, func))
        offset = x
        for kid in kids:
            place(kid, offset, depth + 1)
            offset += kid[1]

    offset = 0.0
    for root in roots:
        place(root, offset, 0)
        offset += root[1]
    depth = max((d for _, d, _, _ in frames), default=0) + 1
    height = (depth + 3) * ROW
    scale = (WIDTH - 20) / total
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="{FONT}">',
             f'<rect width="{WIDTH}" height="{height}" fill="#f8f8f0"/>',
             f'<text x="{WIDTH / 2}" y="{ROW + 2}" text-anchor="middle" font-size="{FONT + 3}">{escape(title)}</text>',
             f'<text x="10" y="{2 * ROW}" fill="#555">approximate call tree from cProfile caller/callee totals '
             f'(all threads, {total:.2f} s in all; see tools/bench_flame.py)</text>']
    for x, level, seconds, func in frames:
        name = label(func)
        left, width = 10 + x * scale, seconds * scale
        top = height - (level + 1) * ROW
        text = f'{name}: {seconds:.3f} s ({100 * seconds / total:.1f}%)'
        parts.append(f'<g class="frame"><title>{escape(text)}</title>'
                     f'<rect x="{left:.2f}" y="{top}" width="{max(width - 0.5, 0.1):.2f}" height="{ROW - 1}" '
                     f'fill="{_colour(func[2])}" rx="1"/>')
        fits = int(width / (FONT * 0.62))
        if fits >= 4:
            shown = func[2] if len(func[2]) <= fits else func[2][:fits - 2] + '..'
            parts.append(f'<text x="{left + 3:.2f}" y="{top + ROW - 4}">{escape(shown)}</text>')
        parts.append('</g>')
    parts.append('</svg>')
    with open(out, 'w') as f:
        f.write('\n'.join(parts) + '\n')
    return len(frames)


def main(argv=None):
    parser = argparse.ArgumentParser(description='An SVG flame graph from a cProfile (pstats) file.')
    parser.add_argument('profile', help='pstats file (tools/bench_profile.py -o)')
    parser.add_argument('-o', '--out', required=True, help='SVG file to write')
    parser.add_argument('--title', default=None, help='title drawn on the graph (default: the profile file name)')
    parser.add_argument('--min-width', type=float, default=0.002, help='smallest frame, as a fraction of the whole')
    args = parser.parse_args(argv)
    try:
        stats = pstats.Stats(args.profile)
    except (OSError, TypeError, ValueError, EOFError) as exc:
        print(f'bench_flame: cannot read {args.profile}: {exc}', file=sys.stderr)
        return 1
    count = render(stats, args.out, args.title or os.path.basename(args.profile), args.min_width)
    print(f'bench_flame: {args.out}: {count} frames', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
