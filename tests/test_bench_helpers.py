"""Unit tests for the benchmark helpers in tools/: result shaping (bench.jq), the grid (bench_plan), the
environment's pure functions (bench_env), peak RSS (peakrss), the thread-aware profiler and the chart."""

import json
import pstats
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / 'tools'
sys.path.insert(0, str(ROOT))

from tools import bench_env, bench_flame, bench_plan, bench_plot, peakrss  # noqa: E402

COLUMNS = ['tool', 'workflow', 'j', 'J', 'runs', 'mean_s', 'stddev_s', 'min_s', 'max_s', 'peak_rss_mb', 'mb_per_s']


def jq(program, *args, stdin=None, raw=False, slurp=False):
    """Run a program against the bench.jq library; returns parsed JSON (or raw text lines)."""
    argv = ['jq', '-L', str(TOOLS)] + (['-s'] if slurp else []) + (['-r'] if raw else ['-c']) + list(args)
    argv.append('include "bench"; ' + program)
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)
    if raw:
        return result.stdout.splitlines()
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope='module')
def hyperfine_export(tmp_path_factory):
    """A real hyperfine --export-json document with three runs."""
    path = tmp_path_factory.mktemp('hyperfine') / 'h.json'
    subprocess.run(['hyperfine', '--runs', '3', '--warmup', '0', '--style', 'none', '--export-json', str(path),
                    'sleep 0.02'], check=True, capture_output=True)
    return json.loads(path.read_text())


def make_cell(tool='occystrap', workflow='single-pull', j=4, J=None, nbytes=30_000_000):
    return {'tool': tool, 'workflow': workflow, 'j': j, 'J': J, 'bytes': nbytes, 'command': 'true',
            'prepare': 'true'}


def make_row(hyperfine_export, **kwargs):
    rss = {'exit_code': 0, 'peak_rss_kb': 51200, 'wall_s': 0.1}
    return jq('row($h; $rss; null)', '--argjson', 'h', json.dumps(hyperfine_export), '--argjson', 'rss',
              json.dumps(rss), stdin=json.dumps(make_cell(**kwargs)))[0]


# --- bench.jq ---------------------------------------------------------------------------------------------------

def test_row_from_hyperfine_export(hyperfine_export):
    row = make_row(hyperfine_export)
    result = hyperfine_export['results'][0]
    assert list(row) == COLUMNS + ['status']
    assert row['tool'] == 'occystrap' and row['workflow'] == 'single-pull' and row['j'] == 4 and row['J'] is None
    assert row['runs'] == 3
    assert row['mean_s'] == pytest.approx(result['mean'], abs=1e-4)
    assert row['stddev_s'] == pytest.approx(result['stddev'], abs=1e-4)
    assert row['min_s'] <= row['mean_s'] <= row['max_s']
    assert row['peak_rss_mb'] == 50.0
    assert row['mb_per_s'] == pytest.approx(30 / result['mean'], rel=1e-2)
    assert row['status'] == 'ok'


def test_failed_row_keeps_its_identity_and_says_why():
    row = jq('row(null; null; "exit 2: error: boom")', stdin=json.dumps(make_cell(workflow='multi-dir', J=3)))[0]
    assert row['status'] == 'failed'
    assert row['error'] == 'exit 2: error: boom'
    assert row['workflow'] == 'multi-dir' and row['J'] == 3
    assert row['runs'] == 0
    assert all(row[k] is None for k in ('mean_s', 'stddev_s', 'min_s', 'max_s', 'peak_rss_mb', 'mb_per_s'))


def test_info_rows_have_no_throughput(hyperfine_export):
    row = make_row(hyperfine_export, workflow='bulk-quay-info', J=3, nbytes=None)
    assert row['mb_per_s'] is None
    assert row['mean_s'] > 0


def test_baseline_adds_ratio_to_our_rows_only(hyperfine_export):
    ours = make_row(hyperfine_export)
    ours['mean_s'] = 1.0
    base = dict(ours, tool='baseline', mean_s=2.0)
    other_cell = dict(ours, j=8, mean_s=3.0)     # no baseline for j=8
    skopeo = dict(ours, tool='skopeo', j=None, mean_s=0.5)
    rows = jq('with_baseline | ordered', stdin=json.dumps([ours, base, other_cell, skopeo]))[0]
    assert [list(r) for r in rows] == [COLUMNS + ['baseline_mean_s', 'ratio', 'status']] * 4
    assert rows[0]['baseline_mean_s'] == 2.0 and rows[0]['ratio'] == 0.5
    assert rows[1]['ratio'] is None        # the baseline row itself
    assert rows[2]['baseline_mean_s'] is None and rows[2]['ratio'] is None
    assert rows[3]['ratio'] is None


def test_without_baseline_rows_are_unchanged(hyperfine_export):
    row = make_row(hyperfine_export)
    rows = jq('with_baseline | ordered', stdin=json.dumps([row]))[0]
    assert rows == [row]


def test_tsv_has_a_header_and_dashes_for_nulls(hyperfine_export):
    ok = make_row(hyperfine_export)
    failed = jq('row(null; null; "boom")', stdin=json.dumps(make_cell(tool='skopeo', j=None)))[0]
    lines = jq('ordered | tsv', stdin=json.dumps([ok, failed]), raw=True)
    assert lines[0].split('\t') == COLUMNS + ['status']
    assert len(lines) == 3
    fields = lines[1].split('\t')
    assert fields[:4] == ['occystrap', 'single-pull', '4', '-']
    assert float(fields[5]) == ok['mean_s']
    assert lines[2].split('\t')[-1] == 'failed'
    assert lines[2].split('\t')[2] == '-'
    assert all(len(line.split('\t')) == len(COLUMNS) + 1 for line in lines)


def test_rows_from_jsonl_slurp(hyperfine_export):
    rows = [make_row(hyperfine_export, j=j) for j in (1, 4)]
    result = jq('with_baseline | ordered', stdin='\n'.join(json.dumps(r) for r in rows), slurp=True)[0]
    assert [r['j'] for r in result] == [1, 4]


# --- bench_plan -------------------------------------------------------------------------------------------------

STATE = {'tls': False, 'ca': None, 'cert_dir': None,
         'source': {'host': '127.0.0.1:5001'}, 'push': {'host': '127.0.0.1:5002', 'storage': '/tmp/push store'},
         'quay': {'api': 'http://127.0.0.1:5003/api/v1'}}
IMAGES = {'ubuntu': {'name': 'library/ubuntu', 'bytes': 30_000_000},
          'app': {'name': 'bench/app', 'bytes': 190_000_000},
          'fleet': {'glob': 'fleet/*', 'bytes': 250_000_000},
          'quay': {'org': 'benchorg', 'bytes': 1000},
          'mirror': {'glob': 'mirror-100/*', 'bytes': 9_000_000, 'skopeo_yaml': '/r/skopeo-sync.yaml'},
          'tag': 'latest'}


def test_parse_lists():
    assert bench_plan.parse_int_list('1,4, 8') == [1, 4, 8]
    for bad in ('', '1,,2', '0', '-1', 'x'):
        with pytest.raises(ValueError):
            bench_plan.parse_int_list(bad)
    assert bench_plan.parse_workflows('multi-dir,single-pull') == ['single-pull', 'multi-dir']
    assert bench_plan.parse_workflows('all') == list(bench_plan.WORKFLOWS)
    with pytest.raises(ValueError, match='nope'):
        bench_plan.parse_workflows('single-pull,nope')


def test_default_grid_covers_every_workflow_and_value():
    plan = bench_plan.Plan(STATE, IMAGES, '/tmp/out', '/venv/bin/python')
    cells = list(plan.cells(['occystrap'], bench_plan.WORKFLOWS, [1, 4, 8, 16], [1, 3, 6]))
    assert len(cells) == 5 * 4 + 2 * 4 * 3 + 2 * 3        # the mirroring workflows go over -J only
    assert {c['workflow'] for c in cells} == set(bench_plan.WORKFLOWS)
    multi = [c for c in cells if c['workflow'] == 'multi-dir']
    assert sorted({(c['j'], c['J']) for c in multi}) == [(j, J) for j in (1, 4, 8, 16) for J in (1, 3, 6)]
    assert all(c['J'] is None for c in cells if c['workflow'] not in bench_plan.MULTI_IMAGE)
    assert sorted((c['j'], c['J']) for c in cells if c['workflow'] == 'resync') == [(None, 1), (None, 3), (None, 6)]


def test_commands_are_shell_words_with_the_right_uris():
    plan = bench_plan.Plan(STATE, IMAGES, '/tmp/out', '/venv/bin/python')
    cells = {(c['workflow'], c['j'], c['J']): c for c in
             plan.cells(['occystrap'], bench_plan.WORKFLOWS, [8], [6])}
    argv = shlex.split(cells[('multi-dir', 8, 6)]['command'])
    assert argv[:3] == ['/venv/bin/python', '-m', 'occystrap']
    assert argv[3:9] == ['--insecure', '-j', '8', '-J', '6', 'process']
    assert argv[9:] == ['registry://127.0.0.1:5001/fleet/*:latest', 'dir:///tmp/out/images?unique_names=true']
    push = cells[('app-push', 8, None)]
    assert shlex.split(push['command'])[-1] == 'registry://127.0.0.1:5002/bench/app:latest'
    assert shlex.split(push['prepare'].split('&&')[-1]) == ['rm', '-rf', '/tmp/push store/docker']
    assert 'push store' not in cells[('single-pull', 8, None)]['prepare']
    info = shlex.split(cells[('bulk-quay-info', 8, 6)]['command'])
    assert info[-2:] == ['info', 'quay://benchorg:latest?api=http://127.0.0.1:5003/api/v1&registry=127.0.0.1:5001']
    assert cells[('bulk-quay-info', 8, 6)]['bytes'] is None
    assert cells[('app-pull', 8, None)]['bytes'] == 190_000_000
    assert cells[('multi-dir', 8, 6)]['bytes'] == 250_000_000


def test_peers_http1_and_tls():
    state = dict(STATE, tls=True, ca='/tls/ca.pem', cert_dir='/tls/certs')
    plan = bench_plan.Plan(state, IMAGES, '/tmp/out', '/venv/bin/python', old_occystrap='/old/bin/occystrap')
    cells = list(plan.cells(['occystrap-http1', 'skopeo', 'occystrap-0.4.17'], bench_plan.WORKFLOWS, [4], [3]))
    skopeo = [c for c in cells if c['tool'] == 'skopeo']
    assert [c['workflow'] for c in skopeo] == list(bench_plan.SKOPEO_WORKFLOWS)
    assert all(c['j'] is None and c['J'] is None for c in skopeo)
    tar = next(c for c in skopeo if c['workflow'] == 'single-tar')
    assert shlex.split(tar['command'])[-1] == 'docker-archive:/tmp/out/ubuntu.tar:library/ubuntu:latest'
    assert '--src-cert-dir=/tls/certs' in shlex.split(tar['command'])
    http1 = next(c for c in cells if c['tool'] == 'occystrap-http1')
    assert {'--no-http2', '--ca-cert', '/tls/ca.pem'} <= set(shlex.split(http1['command']))
    old = [c for c in cells if c['tool'] == 'occystrap-0.4.17']
    assert [c['workflow'] for c in old] == list(bench_plan.OLD_WORKFLOWS)
    assert all(c['J'] is None for c in old)
    assert old[0]['command'].startswith('SSL_CERT_FILE=/tls/ca.pem REQUESTS_CA_BUNDLE=/tls/ca.pem /old/bin/occystrap')


def test_profile_command_wraps_our_cells_only():
    plan = bench_plan.Plan(STATE, IMAGES, '/tmp/out', '/venv/bin/python', baseline_python='/b/python',
                           tools_dir='/repo/tools')
    cells = list(plan.cells(['occystrap', 'baseline'], ['single-pull'], [4], [3], profile_out='/r/p.prof'))
    argv = shlex.split(cells[0]['profile_command'])
    # Without py-spy, the flame graph is drawn from the cProfile data.
    assert argv[:10] == ['/venv/bin/python', '/repo/tools/bench_profile.py', '-o', '/r/p.prof', '--summary',
                         '/r/p.txt', '--flamegraph', '/r/p.svg', '-m', 'occystrap']
    assert argv[10:] == shlex.split(cells[0]['command'])[3:]
    assert 'profile_command' not in cells[1] and 'flame_command' not in cells[0]
    assert shlex.split(cells[1]['command'])[0] == '/b/python'
    # With py-spy, a run of its own samples every thread of the same command.
    plan.py_spy = '/venv/bin/py-spy'
    cell = next(plan.cells(['occystrap'], ['single-pull'], [4], [3], profile_out='/r/p.prof'))
    assert '--flamegraph' not in shlex.split(cell['profile_command'])
    spy = shlex.split(cell['flame_command'])
    assert spy[:8] == ['/venv/bin/py-spy', 'record', '--threads', '--rate', '250', '-o', '/r/p.svg', '--']
    assert spy[8:] == shlex.split(cell['command'])


# --- bench_env --------------------------------------------------------------------------------------------------

def test_parse_hostport():
    assert bench_env.parse_hostport('localhost:5000') == ('localhost', 5000)
    assert bench_env.parse_hostport('[::1]:5000') == ('::1', 5000)
    for bad in ('localhost', ':5000', 'host:port'):
        with pytest.raises(ValueError):
            bench_env.parse_hostport(bad)


def test_registry_config():
    config = bench_env.registry_config('/store', '127.0.0.1:1234')
    assert json.loads(json.dumps(config)) == config
    assert config['storage']['filesystem']['rootdirectory'] == '/store'
    assert config['http']['addr'] == '127.0.0.1:1234' and 'tls' not in config['http']
    assert 'cache' not in config['storage']       # wiping the storage must really empty the registry
    tls = bench_env.registry_config('/store', '127.0.0.1:1234', {'cert': '/c.pem', 'key': '/k.pem'})
    assert tls['http']['tls'] == {'certificate': '/c.pem', 'key': '/k.pem'}


def test_expected_images():
    images = {i['key']: i for i in bench_env.expected_images(1.0)}
    assert images['ubuntu']['repo'] == 'library/ubuntu' and images['ubuntu']['model'] == 'base'
    assert images['app']['repo'] == 'bench/app' and images['app']['model'] == 'app'
    assert images['fleet']['count'] >= 12
    assert images['quay']['count'] >= 50 and images['quay']['repo'] == 'benchorg'
    assert images['quay']['scale'] < 0.01              # info reads manifests only
    quick = {i['key']: i for i in bench_env.expected_images(0.02, 'quick/', 'quickorg')}
    assert quick['ubuntu']['repo'] == 'quick/library/ubuntu' and quick['ubuntu']['scale'] == 0.02
    assert quick['fleet']['repo'] == 'quick/fleet' and quick['quay']['repo'] == 'quickorg'
    assert bench_env.scale_tag(1.0) == 'scale-1' and bench_env.scale_tag(0.02) == 'scale-0.02'


def test_image_bytes_counts_shared_blobs_once():
    base = {'digest': 'sha256:base', 'size': 100}
    one = {'config': {'digest': 'sha256:c1', 'size': 5}, 'layers': [base, {'digest': 'sha256:a', 'size': 10}]}
    two = {'config': {'digest': 'sha256:c2', 'size': 6}, 'layers': [base]}
    assert bench_env.image_bytes([one]) == 115
    assert bench_env.image_bytes([one, two]) == 121


def test_tls_material_is_trusted_for_loopback(tmp_path):
    import ssl
    paths = bench_env.write_tls_material(tmp_path)
    context = ssl.create_default_context(cafile=paths['ca'])
    assert context.cert_store_stats()['x509_ca'] == 1
    assert (Path(paths['cert_dir']) / 'ca.crt').read_bytes() == Path(paths['ca']).read_bytes()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(paths['cert'], paths['key'])     # the key matches the certificate


# --- peakrss ----------------------------------------------------------------------------------------------------

def test_peakrss_reports_the_childs_peak_and_exit_status(tmp_path):
    out = tmp_path / 'rss.json'
    code = 'x = bytearray(120 * 1024 * 1024); x[::4096] = b"1" * len(x[::4096])'
    status = peakrss.main(['--out', str(out), '--', sys.executable, '-c', code])
    result = json.loads(out.read_text())
    assert status == 0 and result['exit_code'] == 0
    assert result['peak_rss_kb'] >= 120 * 1024
    assert result['wall_s'] > 0
    status = subprocess.run([sys.executable, str(TOOLS / 'peakrss.py'), '--out', str(out), '--', 'sh', '-c',
                             'exit 3']).returncode
    assert status == 3 and json.loads(out.read_text())['exit_code'] == 3


# --- bench_profile ----------------------------------------------------------------------------------------------

def test_profile_covers_worker_threads(tmp_path):
    (tmp_path / 'threaded_job.py').write_text(textwrap.dedent('''
        import sys, threading

        def square(i):
            return i * i

        def busy_in_thread():
            return sum(square(i) for i in range(200000))

        t = threading.Thread(target=busy_in_thread)
        t.start()
        t.join()
        sys.exit(int(sys.argv[1]))
    '''))
    prof, summary, svg = tmp_path / 'p.prof', tmp_path / 'p.txt', tmp_path / 'p.svg'
    result = subprocess.run([sys.executable, str(TOOLS / 'bench_profile.py'), '-o', str(prof), '--summary',
                             str(summary), '--flamegraph', str(svg), '-m', 'threaded_job', '7'], cwd=tmp_path,
                            capture_output=True, text=True, env={'PYTHONPATH': str(tmp_path), 'PATH': '/usr/bin:/bin'})
    assert result.returncode == 7, result.stderr
    functions = {name for (_, _, name) in pstats.Stats(str(prof)).stats}
    assert 'busy_in_thread' in functions
    text = summary.read_text()
    assert '2 threads profiled' in text and 'by cumulative time' in text and 'busy_in_thread' in text
    # The flame graph drawn from the same statistics: valid SVG, a frame per function of the call tree, the
    # worker thread's frames stacked on its entry, and square() (called from the generator) above them.
    frames = flame_frames(svg)
    assert 'busy_in_thread' in frames and 'square' in frames and 'run' in frames
    assert frames['square']['y'] < frames['busy_in_thread']['y'] < frames['run']['y']
    assert frames['square']['width'] <= frames['busy_in_thread']['width'] <= frames['run']['width']


def flame_frames(svg):
    """{function name: {'y', 'width'}} of the widest frame of each function in a bench_flame SVG (parsed as XML)."""
    ns = {'svg': 'http://www.w3.org/2000/svg'}
    root = ElementTree.parse(svg).getroot()
    assert root.tag == '{http://www.w3.org/2000/svg}svg'
    frames = {}
    for group in root.findall('svg:g', ns):
        title = group.find('svg:title', ns).text
        rect = group.find('svg:rect', ns)
        name = title.split(' ', 1)[0].rstrip(':')
        width = float(rect.get('width'))
        if name not in frames or frames[name]['width'] < width:
            frames[name] = {'y': float(rect.get('y')), 'width': width}
    return frames


def test_flame_graph_of_a_profile_in_process(tmp_path):
    import cProfile

    def leaf():
        return sum(range(50000))

    def middle():
        return [leaf() for _ in range(20)]

    profile = cProfile.Profile()
    profile.enable()
    middle()
    profile.disable()
    stats = pstats.Stats(profile)
    total, roots = bench_flame.call_tree(stats, 0.0)
    names = [root[0][2] for root in roots]
    assert total > 0 and any(n == 'middle' for n in names)
    count = bench_flame.render(stats, str(tmp_path / 'f.svg'), title='a <title> & more')
    frames = flame_frames(tmp_path / 'f.svg')
    assert count >= 2 and frames['leaf']['y'] < frames['middle']['y']
    texts = [t.text for t in ElementTree.parse(tmp_path / 'f.svg').getroot().iter('{http://www.w3.org/2000/svg}text')]
    assert texts[0] == 'a <title> & more'          # escaped in the file, whole again when parsed


# --- bench_plot -------------------------------------------------------------------------------------------------

def test_plot_writes_a_png(tmp_path, hyperfine_export):
    rows = [make_row(hyperfine_export, j=j) for j in (1, 4, 8)]
    rows += [make_row(hyperfine_export, workflow='multi-dir', j=j, J=J) for j in (1, 4) for J in (1, 3)]
    rows.append(make_row(hyperfine_export, tool='skopeo', j=None))
    rows.append(jq('row(null; null; "boom")', stdin=json.dumps(make_cell(workflow='app-pull')))[0])
    first, second = tmp_path / 'a' / 'results.json', tmp_path / 'b' / 'results.json'
    for path, latency in ((first, 0), (second, 40)):
        path.parent.mkdir()
        path.write_text(json.dumps(rows))
        (path.parent / 'meta.json').write_text(json.dumps({
            'latency_ms': latency, 'bandwidth_mbit': 200, 'date': '20261201T150405Z', 'revision': 'abcdef0123456789',
            'uncommitted_files': 0, 'machine': f'2 CPUs (Test CPU {latency}), 24 GiB, Linux 6.18'}))
    out = tmp_path / 'chart.png'
    drawn = bench_plot.plot([str(first), str(second)], str(out))
    assert drawn == ['single-pull', 'multi-dir']       # app-pull only failed
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert out.stat().st_size > 10000
    assert bench_plot.file_label(str(second)) == '40 ms, 200 Mbit/s'
    # The chart names the runs it was drawn from: date, revision and machine of each, in the PNG's metadata as in
    # its title.
    from PIL import Image
    with Image.open(out) as png:
        description = png.text['Description']
    assert description.splitlines() == [
        'occystrap benchmark: 0 ms, 200 Mbit/s vs 40 ms, 200 Mbit/s',
        '0 ms, 200 Mbit/s: 2026-12-01 15:04 UTC, rev abcdef0, 2 CPUs (Test CPU 0), 24 GiB, Linux 6.18',
        '40 ms, 200 Mbit/s: 2026-12-01 15:04 UTC, rev abcdef0, 2 CPUs (Test CPU 40), 24 GiB, Linux 6.18']


def test_plot_draws_mirroring_workflows_over_image_jobs_with_skopeo_as_a_level(tmp_path, hyperfine_export):
    rows = [make_row(hyperfine_export, workflow='bulk-mirror', j=None, J=J) for J in (3, 6, 12)]
    rows.append(make_row(hyperfine_export, tool='skopeo', workflow='bulk-mirror', j=None, J=None))
    path = tmp_path / 'results.json'
    path.write_text(json.dumps(rows))
    lines = bench_plot.series(rows, 'J')
    assert [p[0] for p in lines[('occystrap', None)]] == [3, 6, 12] and lines[('skopeo', None)][0][0] is None
    assert bench_plot.plot([str(path)], str(tmp_path / 'c.png')) == ['bulk-mirror']
    assert bench_plot.provenance(str(path)) == tmp_path.name      # no meta.json: the directory's name


def test_memory_curve_chart(tmp_path):
    rows = [{'tool': 'occystrap', 'workflow': workflow, 'j': None, 'J': J, 'repos': repos, 'runs': 1,
             'mean_s': 0.1 * J, 'peak_rss_mb': 30 + J, 'status': 'ok'}
            for workflow in ('curve-mirror', 'curve-quay-info') for repos in (10, 40) for J in (1, 3, 6)]
    rows.append({'tool': 'occystrap', 'workflow': 'single-pull', 'j': 4, 'J': None, 'mean_s': 1.0, 'status': 'ok'})
    path = tmp_path / 'results.json'
    path.write_text(json.dumps(rows))
    (tmp_path / 'meta.json').write_text(json.dumps({'date': '20261202T010203Z', 'revision': '1234567890',
                                                    'uncommitted_files': 2, 'machine': '2 CPUs'}))
    out = tmp_path / 'memory-curve.png'
    assert bench_plot.main([str(path), '--memory-curve', '-o', str(out)]) == 0
    from PIL import Image
    with Image.open(out) as png:
        assert png.text['Description'].splitlines()[1] == '2026-12-02 01:02 UTC, rev 1234567 (+2 uncommitted), 2 CPUs'
    assert bench_plot.plot_memory_curve(str(path), str(out)) == [
        ('curve-mirror', 10), ('curve-mirror', 40), ('curve-quay-info', 10), ('curve-quay-info', 40)]
    # The time chart leaves the curve out.
    assert bench_plot.plot([str(path)], str(tmp_path / 'chart.png')) == ['single-pull']


def test_memory_curve_cells_run_once_per_fleet_and_image_jobs():
    images = dict(IMAGES, curve={'100': {'glob': 'memcurve-100/*', 'org': 'memcurve-100', 'bytes': 5_000_000},
                                 '400': {'glob': 'memcurve-400/*', 'org': 'memcurve-400', 'bytes': 20_000_000}})
    plan = bench_plan.Plan(STATE, images, '/tmp/out', '/venv/bin/python')
    assert bench_plan.parse_workflows('all') == list(bench_plan.WORKFLOWS)
    cells = list(plan.cells(['occystrap', 'skopeo'], bench_plan.CURVE_WORKFLOWS, [4], [3], curve_repos=[100, 400],
                            curve_image_jobs=[1, 32]))
    assert [(c['workflow'], c['repos'], c['J'], c['j'], c['once']) for c in cells] == [
        (w, n, J, None, True) for w in ('curve-mirror', 'curve-quay-info') for n in (100, 400) for J in (1, 32)]
    mirror = sh_words(cells[3]['command'])
    assert mirror[:8] == ['/venv/bin/python', '-m', 'occystrap', '--insecure', '-J', '32', 'process',
                          'registry://127.0.0.1:5001/memcurve-400/*:latest']
    assert mirror[8].startswith('registry://127.0.0.1:5002/bulk-') and cells[3]['bytes'] == 20_000_000
    assert 'push store/docker' in cells[3]['prepare']
    info = shlex.split(cells[4]['command'])
    assert info[-2:] == ['info', 'quay://memcurve-100:latest?api=http://127.0.0.1:5003/api/v1&registry=127.0.0.1:5001']
    assert cells[4]['bytes'] is None
    curve = {i['key']: i for i in bench_env.curve_images([100, 400])}
    assert curve['curve-400'] == {'key': 'curve-400', 'model': 'fleet', 'repo': 'memcurve-400', 'count': 400,
                                  'scale': bench_env.MIRROR_IMAGES[4]}


def test_plot_refuses_results_without_successful_rows(tmp_path):
    path = tmp_path / 'results.json'
    path.write_text(json.dumps([{'tool': 'occystrap', 'workflow': 'single-pull', 'status': 'failed',
                                 'mean_s': None}]))
    assert bench_plot.main([str(path), '-o', str(tmp_path / 'x.png')]) == 1
    assert not (tmp_path / 'x.png').exists()


def test_remote_cells_use_occystraps_own_trust_and_no_delay_proxy():
    state = dict(STATE, push={'host': '127.0.0.1:6000', 'direct': '127.0.0.1:5002', 'storage': '/tmp/push store'})
    remote = {'sources': ['registry://reg.example/team/app:v1'], 'ca_cert': '/ca.pem', 'rate_limit': 5,
              'quay': {'api': 'https://quay.example/api/v1', 'org': 'team', 'registry': None}, 'stats_dir': '/r/st'}
    plan = bench_plan.Plan(state, IMAGES, '/tmp/out', '/venv/bin/python', remote=remote)
    assert bench_plan.parse_workflows('all') == list(bench_plan.WORKFLOWS)      # never part of all
    cells = list(plan.cells(['occystrap', 'skopeo'], bench_plan.REMOTE_WORKFLOWS, [1, 4], [3]))
    assert [(c['workflow'], c['j'], c['J']) for c in cells] == [
        ('remote-pull', 1, None), ('remote-pull', 4, None), ('remote-tar', 1, None), ('remote-tar', 4, None),
        ('remote-push', 1, None), ('remote-push', 4, None), ('remote-quay-info', 1, 3), ('remote-quay-info', 4, 3)]
    push = cells[4]
    words = sh_words(push['command'])
    assert words[:6] == ['/venv/bin/python', '-m', 'occystrap', '--ca-cert', '/ca.pem', '-j']
    assert '--insecure' not in words and '--rate-limit' not in words
    assert words[8].startswith('/r/st/remote-push-0-j1-JNone/run-') and words[8] != sh_words(push['command'])[8]
    # The push goes straight to the local push registry, not through the delay proxy in front of it.
    assert words[9:] == ['process', 'registry://reg.example/team/app:v1',
                         'registry://127.0.0.1:5002/remote/team/app:v1?insecure=true']
    assert push['image'] == 'registry://reg.example/team/app:v1' and push['bytes'] is None
    assert 'push store/docker' in push['prepare'] and '/r/st/remote-push-0-j1-JNone' in push['prepare']
    info = sh_words(cells[6]['command'])
    assert info[5:11] == ['-j', '1', '-J', '3', '--rate-limit', '5']
    assert info[-2:] == ['info', 'quay://team?api=https://quay.example/api/v1'] and cells[6]['image'] == 'team'


def sh_words(command):
    """The words `sh -c` would run for `command`: what the shell expands is expanded."""
    return subprocess.run(['sh', '-c', 'set -- ' + command + '; printf "%s\\n" "$@"'], capture_output=True,
                          text=True, check=True).stdout.splitlines()


def test_rows_of_remote_and_once_cells_get_their_columns():
    cell = dict(make_cell(workflow='remote-quay-info', J=3, nbytes=None), image='team', throttled=1.5)
    row = jq('row(null; {"peak_rss_kb": 2048, "wall_s": 0.5}; null)', stdin=json.dumps(cell))[0]
    assert row['runs'] == 0 and row['throttled'] == 1.5 and row['image'] == 'team'   # not timed, not "once"
    once = dict(make_cell(workflow='curve-mirror', j=None, J=6), repos=400, once=True)
    curve = jq('row(null; {"peak_rss_kb": 2048, "wall_s": 0.5}; null)', stdin=json.dumps(once))[0]
    assert (curve['runs'], curve['mean_s'], curve['repos'], curve['peak_rss_mb']) == (1, 0.5, 400, 2.0)
    lines = jq('ordered | tsv', stdin=json.dumps([row, curve]), raw=True)
    assert lines[0].split('\t') == ['tool', 'workflow', 'image', 'j', 'J', 'repos'] + COLUMNS[4:] + [
        'throttled', 'status']
    assert lines[2].split('\t')[2] == '-' and lines[2].split('\t')[5] == '400'
