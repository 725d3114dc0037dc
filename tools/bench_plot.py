"""Chart benchmark results: mean time against -j, one line per -J, tool and result file, a panel per workflow.

Usage::

    python tools/bench_plot.py RESULTS.json [MORE.json ...] -o chart.png [--label NAME ...] [--workflows LIST]
    python tools/bench_plot.py RESULTS.json --memory-curve -o memory-curve.png

Inputs are the results.json files of tools/benchmark.sh (e.g. one run at 0 ms and one with --latency). Each file
is labelled with --label, else from the meta.json beside it ("0 ms", "40 ms, 200 Mbit/s"), else its directory
name. Error bars are one standard deviation. Workflows whose rows have no -j (bulk-mirror, resync) are drawn
against -J. Tools without -j or -J (skopeo, with --peers) are drawn as horizontal dashed lines, labelled in the
legend; failed cells are left out. Legends sit below their panel, never over the lines.

The chart says where its numbers come from: the title names every result file's date, revision and machine (from
its meta.json), and the PNG carries the same text as its Title and Description metadata, so a chart in
docs/performance.md can be checked against the run of the tables beside it.

``--memory-curve`` draws the bulk memory curve instead (the curve-* workflows of ``--memory-curve`` runs): peak
RSS against -J, a line per workflow and repository count, and beside it the time of the same runs.
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


def load_meta(path):
    """The meta.json beside a results.json, or {}."""
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), 'meta.json')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def provenance(path):
    """'2026-12-01 15:04 UTC, rev 70c2c27 (+2 files), 2 CPUs AMD EPYC, 24 GiB': where a result file comes from."""
    meta = load_meta(path)
    if not meta:
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or path
    date = meta.get('date') or '?'
    if len(date) == 16 and date[8] == 'T':           # 20261201T150405Z
        date = f'{date[:4]}-{date[4:6]}-{date[6:8]} {date[9:11]}:{date[11:13]} UTC'
    revision = f'rev {(meta.get("revision") or "unknown")[:7]}'
    if meta.get('uncommitted_files'):
        revision += f' (+{meta["uncommitted_files"]} uncommitted)'
    machine = meta.get('machine') or (f'{meta["cpus"]} CPUs' if meta.get('cpus') else 'machine unknown')
    return f'{date}, {revision}, {machine}'


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


def series(rows, over='j'):
    """Group rows into lines: {(tool, J): [(j, mean, stddev), ...] sorted by j}; tools without j get j None.

    With over='J' (workflows without -j): {(tool, None): [(J, mean, stddev), ...]}; tools without J get J None.
    """
    lines = {}
    for row in rows:
        if over == 'J':
            key, x = (row['tool'], None), row.get('J')
        else:
            key, x = (row['tool'], row.get('J')), row.get('j')
        lines.setdefault(key, []).append((x, row['mean_s'], row.get('stddev_s')))
    return {key: sorted(points, key=lambda p: (p[0] is None, p[0] or 0)) for key, points in lines.items()}


def title_text(kind, result_files, labels):
    """The chart's title: what it shows, then one line per result file saying where its numbers come from."""
    lines = [kind]
    for path, label in zip(result_files, labels):
        lines.append((f'{label}: ' if len(result_files) > 1 else '') + provenance(path))
    return '\n'.join(lines)


def _save(fig, out, title):
    """Save with the title as PNG metadata too (Title, and the provenance lines as Description)."""
    fig.savefig(out, dpi=110, bbox_inches='tight',
                metadata={'Title': title.split('\n')[0], 'Description': title, 'Software': 'tools/bench_plot.py'})


def plot(result_files, out, labels=None, workflows=None):
    """Write the chart to out (PNG); returns the list of workflows drawn. Raises ValueError when nothing to draw."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    labels = list(labels or [])
    data = []
    for i, path in enumerate(result_files):
        rows = [r for r in load_rows(path) if not r['workflow'].startswith('curve-')]
        data.append((labels[i] if i < len(labels) else file_label(path), rows))
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
    fig, axes = plt.subplots(nrows, columns, figsize=(5.2 * columns, 5.0 * nrows), squeeze=False)
    styles = ['-', '--', ':', '-.']
    for ax, workflow in zip(axes.flat, drawn):
        ticks = set()
        workflow_rows = [r for _, rows in data for r in rows if r['workflow'] == workflow]
        # Workflows without -j (the mirroring ones) go over -J.
        over = 'J' if all(r.get('j') is None for r in workflow_rows) else 'j'
        for index, (label, rows) in enumerate(data):
            lines = series([r for r in rows if r['workflow'] == workflow], over)
            for (tool, J), points in sorted(lines.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
                name = tool + ('' if J is None else f' -J {J}') + (f' ({label})' if len(data) > 1 else '')
                if points[0][0] is None:
                    # A tool without -j/-J (skopeo): its time as a level across the panel.
                    ax.axhline(points[0][1], linestyle='--', linewidth=1.2, color=f'C{(index * 5 + 4) % 10}',
                               label=name + ' (no -j/-J)')
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
        ax.set_xlabel('-J (images at once)' if over == 'J' else '-j (layer transfers in flight)')
        ax.set_ylabel('mean time (s)')
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        # Below the panel, so that it never covers a line.
        ax.legend(fontsize=6, loc='upper center', bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    title = title_text('occystrap benchmark: ' + ' vs '.join(label for label, _ in data), result_files,
                       [label for label, _ in data])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out, title)
    plt.close(fig)
    return drawn


def plot_memory_curve(result_file, out):
    """The bulk memory curve of one results.json: peak RSS and time against -J, a line per workflow and repository
    count. Writes out (PNG); returns the lines drawn as (workflow, repos). ValueError when there are none."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [r for r in load_rows(result_file) if r['workflow'].startswith('curve-') and r.get('J')]
    lines = {}
    for row in rows:
        lines.setdefault((row['workflow'], row.get('repos')), []).append(row)
    if not lines:
        raise ValueError('no successful memory curve rows to plot')
    fig, (memory, time_ax) = plt.subplots(1, 2, figsize=(11, 5.2))
    ticks = sorted({r['J'] for r in rows})
    styles = {'curve-mirror': '-', 'curve-quay-info': '--'}
    for index, ((workflow, repos), points) in enumerate(sorted(lines.items(), key=lambda i: (i[0][0], i[0][1] or 0))):
        points.sort(key=lambda r: r['J'])
        name = f'{workflow[len("curve-"):]}, {repos} repositories'
        xs = [r['J'] for r in points]
        kwargs = dict(marker='o', markersize=3, linestyle=styles.get(workflow, ':'), color=f'C{index % 10}', label=name)
        memory.plot(xs, [r['peak_rss_mb'] for r in points], **kwargs)
        time_ax.plot(xs, [r['mean_s'] for r in points], **kwargs)
    for ax, ylabel in ((memory, 'peak RSS (MB)'), (time_ax, 'time of that run (s)')):
        ax.set_xscale('log', base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel('-J (images at once)')
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    title = title_text('occystrap bulk memory curve: peak RSS against -J and the number of images', [result_file],
                       [file_label(result_file)])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out, title)
    plt.close(fig)
    return sorted(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Chart tools/benchmark.sh results (time against -j and -J).')
    parser.add_argument('results', nargs='+', help='results.json files')
    parser.add_argument('-o', '--out', required=True, help='PNG file to write')
    parser.add_argument('--label', action='append', help='label of each results file, in order')
    parser.add_argument('--workflows', help='comma-separated workflows to draw (default: all present)')
    parser.add_argument('--memory-curve', action='store_true', help='draw the bulk memory curve of one file')
    args = parser.parse_args(argv)
    if args.memory_curve and len(args.results) != 1:
        parser.error('--memory-curve draws one results file')
    try:
        if args.memory_curve:
            drawn = ['%s/%s' % line for line in plot_memory_curve(args.results[0], args.out)]
        else:
            drawn = plot(args.results, args.out, args.label, args.workflows.split(',') if args.workflows else None)
    except (OSError, ValueError) as exc:
        print(f'bench_plot: {exc}', file=sys.stderr)
        return 1
    print(f'bench_plot: {args.out}: {", ".join(drawn)}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
