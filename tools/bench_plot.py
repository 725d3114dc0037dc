"""Chart benchmark results: mean time against -j, one line per -J, tool and result file, a panel per workflow.

Usage::

    python tools/bench_plot.py RESULTS.json [MORE.json ...] -o chart.png [--label NAME ...] [--workflows LIST]

Inputs are the results.json files of tools/benchmark.sh (e.g. one run at 0 ms and one with --latency). Each file
is labelled with --label, else from the meta.json beside it ("0 ms", "40 ms, 200 Mbit/s"), else its directory
name. Error bars are one standard deviation. Tools without -j (skopeo) are drawn as horizontal dashed lines;
failed cells are left out.
"""

import argparse
import json
import math
import os
import sys


def load_rows(path):
    """The successful rows of a results.json file."""
    with open(path) as f:
        rows = json.load(f)
    return [r for r in rows if r.get('status', 'ok') == 'ok' and r.get('mean_s') is not None]


def file_label(path):
    """A short name for a result file: its link conditions from meta.json, else its directory name."""
    meta_path = os.path.join(os.path.dirname(os.path.abspath(path)), 'meta.json')
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or path
    label = '%g ms' % (meta.get('latency_ms') or 0)
    if meta.get('bandwidth_mbit'):
        label += ', %g Mbit/s' % meta['bandwidth_mbit']
    if meta.get('tls'):
        label += ', TLS'
    return label


def series(rows):
    """Group rows into lines: {(tool, J): [(j, mean, stddev), ...] sorted by j}; tools without j get j None."""
    lines = {}
    for row in rows:
        lines.setdefault((row['tool'], row.get('J')), []).append((row.get('j'), row['mean_s'], row.get('stddev_s')))
    return {key: sorted(points, key=lambda p: (p[0] is None, p[0] or 0)) for key, points in lines.items()}


def plot(result_files, out, labels=None, workflows=None):
    """Write the chart to out (PNG); returns the list of workflows drawn. Raises ValueError when nothing to draw."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    labels = list(labels or [])
    data = []
    for i, path in enumerate(result_files):
        data.append((labels[i] if i < len(labels) else file_label(path), load_rows(path)))
    present = []
    for _, rows in data:
        for row in rows:
            if row['workflow'] not in present:
                present.append(row['workflow'])
    drawn = [w for w in (workflows or present) if w in present]
    if not drawn:
        raise ValueError('no successful rows to plot')
    columns = min(3, len(drawn))
    nrows = math.ceil(len(drawn) / columns)
    fig, axes = plt.subplots(nrows, columns, figsize=(5.2 * columns, 3.8 * nrows), squeeze=False)
    styles = ['-', '--', ':', '-.']
    for ax, workflow in zip(axes.flat, drawn):
        ticks = set()
        for index, (label, rows) in enumerate(data):
            lines = series([r for r in rows if r['workflow'] == workflow])
            for (tool, J), points in sorted(lines.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
                name = tool + ('' if J is None else f' -J {J}') + (f' ({label})' if len(data) > 1 else '')
                if points[0][0] is None:
                    ax.axhline(points[0][1], linestyle='--', linewidth=1, color=f'C{(index * 5 + 4) % 10}',
                               label=name)
                    continue
                xs = [p[0] for p in points]
                ticks.update(xs)
                ys = [p[1] for p in points]
                errs = [p[2] or 0 for p in points]
                ax.errorbar(xs, ys, yerr=errs, marker='o', markersize=3, capsize=2, linestyle=styles[index % 4],
                            label=name)
        ax.set_title(workflow)
        ax.set_xscale('log', base=2)
        if ticks:
            ax.set_xticks(sorted(ticks))
            ax.set_xticklabels([str(t) for t in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlabel('-j (layer transfers in flight)')
        ax.set_ylabel('mean time (s)')
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    fig.suptitle('occystrap benchmark: ' + ' vs '.join(label for label, _ in data))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn


def main(argv=None):
    parser = argparse.ArgumentParser(description='Chart tools/benchmark.sh results (time against -j and -J).')
    parser.add_argument('results', nargs='+', help='results.json files')
    parser.add_argument('-o', '--out', required=True, help='PNG file to write')
    parser.add_argument('--label', action='append', help='label of each results file, in order')
    parser.add_argument('--workflows', help='comma-separated workflows to draw (default: all present)')
    args = parser.parse_args(argv)
    try:
        drawn = plot(args.results, args.out, args.label, args.workflows.split(',') if args.workflows else None)
    except (OSError, ValueError) as exc:
        print(f'bench_plot: {exc}', file=sys.stderr)
        return 1
    print(f'bench_plot: {args.out}: {", ".join(drawn)}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
