"""End-to-end: tools/benchmark.sh --quick against a registry this test starts (the script seeds it with skopeo)."""

import json
import os
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.services import Registry, build_oci_layout, free_port, seed_image
from tools.quay_standin import QuayStandin

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'tools' / 'benchmark.sh'
WORKFLOWS = {'single-pull', 'single-tar', 'single-push', 'app-pull', 'app-push', 'bulk-quay-info', 'multi-dir',
             'bulk-mirror', 'resync'}
MULTI_IMAGE = ('bulk-quay-info', 'multi-dir', 'bulk-mirror', 'resync')
MIRRORS = ('bulk-mirror', 'resync')
KEYS = ['tool', 'workflow', 'j', 'J', 'runs', 'mean_s', 'stddev_s', 'min_s', 'max_s', 'peak_rss_mb', 'mb_per_s',
        'status']

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def bench_registry(tmp_path_factory):
    """A registry for this module alone: the first run seeds it, the later ones find the images there."""
    with Registry(tmp_path_factory.mktemp('bench-registry')) as registry:
        yield registry


@pytest.fixture(scope='module')
def bench_cache(tmp_path_factory):
    """One cache (generated images) for the module's runs, kept out of the user's home."""
    return tmp_path_factory.mktemp('bench-cache')


def bench_environment(cache, env=None):
    """The caller's environment without OCCYSTRAP_* settings, with the benchmark cache in `cache`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith('OCCYSTRAP_')}
    environment.update(XDG_CACHE_HOME=str(cache), **(env or {}))
    return environment


def run_benchmark(registry, cache, results, *args, env=None):
    return subprocess.run([str(SCRIPT), '--quick', '--registry', registry.host, '--results', str(results), *args],
                          capture_output=True, text=True, env=bench_environment(cache, env), stdin=subprocess.DEVNULL,
                          timeout=240)


def test_quick_json_covers_every_workflow(bench_registry, bench_cache, tmp_path):
    result = run_benchmark(bench_registry, bench_cache, tmp_path / 'results', '--json')
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert {r['workflow'] for r in rows} == WORKFLOWS
    for row in rows:
        assert list(row) == KEYS, row
        assert row['tool'] == 'occystrap' and row['status'] == 'ok'
        assert row['j'] in ((None,) if row['workflow'] in MIRRORS else (1, 4))
        assert row['J'] == (3 if row['workflow'] in MULTI_IMAGE else None)
        assert row['runs'] == 1
        for key in ('mean_s', 'min_s', 'max_s', 'peak_rss_mb'):
            assert isinstance(row[key], (int, float)) and row[key] > 0, (key, row)
        assert row['min_s'] <= row['mean_s'] <= row['max_s']
        assert row['stddev_s'] is None                      # one run has no spread
        if row['workflow'] in ('bulk-quay-info', 'resync'):
            assert row['mb_per_s'] is None
        else:
            assert isinstance(row['mb_per_s'], (int, float)) and row['mb_per_s'] > 0
    results = tmp_path / 'results'
    assert json.loads((results / 'results.json').read_text()) == rows
    assert (results / 'results.tsv').read_text().startswith('tool\tworkflow\tj\tJ\t')
    assert (results / 'chart.png').read_bytes()[:4] == b'\x89PNG'
    images = json.loads((results / 'images.json').read_text())
    assert len(images['quay']['repos']) >= 50 and len(images['fleet']['repos']) >= 12
    meta = json.loads((results / 'meta.json').read_text())
    assert meta['quick'] is True and meta['source_registry'] == bench_registry.host
    # The images were seeded into the registry the test gave, with skopeo, under the quick names.
    catalog = bench_registry.client().get('/v2/_catalog', params={'n': 1000}).json()['repositories']
    assert 'quick/library/ubuntu' in catalog and 'quick/bench/app' in catalog
    assert sum(name.startswith('quickorg/') for name in catalog) >= 50


def test_tsv_and_profile(bench_registry, bench_cache, tmp_path):
    results = tmp_path / 'results'
    result = run_benchmark(bench_registry, bench_cache, results, '--workflows', 'single-pull', '--jobs', '2',
                           '--profile', 'single-pull')
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split('\t') == KEYS
    assert len(lines) == 2
    fields = dict(zip(KEYS, lines[1].split('\t')))
    assert fields['workflow'] == 'single-pull' and fields['j'] == '2' and fields['J'] == '-'
    assert float(fields['mean_s']) > 0 and fields['status'] == 'ok'
    assert (results / 'profile-single-pull.prof').stat().st_size > 0
    assert 'by cumulative time' in (results / 'profile-single-pull.txt').read_text()
    # A flame graph beside the profile (py-spy's, from the bench extra, or drawn from the cProfile data).
    svg = ElementTree.parse(results / 'profile-single-pull.svg').getroot()
    assert svg.tag == '{http://www.w3.org/2000/svg}svg'
    assert 'occystrap' in ElementTree.tostring(svg, encoding='unicode')


def test_a_failing_cell_is_reported_and_the_rest_go_on(bench_registry, bench_cache, tmp_path):
    # An option occystrap refuses makes every occystrap cell fail; the run must still finish and report them.
    result = run_benchmark(bench_registry, bench_cache, tmp_path / 'results', '--workflows',
                           'single-pull,single-tar', '--jobs', '1', env={'OCCYSTRAP_RETRIES': '99'})
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].split('\t') == KEYS and len(lines) == 3
    assert [line.split('\t')[-1] for line in lines[1:]] == ['failed', 'failed']
    assert result.stderr.count('FAILED: occystrap single-') == 2
    assert 'retries' in result.stderr


def test_a_full_run_gets_as_far_as_its_environment(tmp_path):
    # Without --quick and --results the script names its own results directory; that step once ended every full run
    # silently with status 1. Against a port nobody listens on, it must now get to the registry check and say so.
    port = free_port()
    before = set((ROOT / 'bench-results').glob('*')) if (ROOT / 'bench-results').is_dir() else set()
    try:
        result = subprocess.run([str(SCRIPT), '--registry', f'127.0.0.1:{port}', '--workflows', 'single-pull'],
                                capture_output=True, text=True, env=bench_environment(tmp_path / 'cache'),
                                stdin=subprocess.DEVNULL, timeout=240)
    finally:
        for made in set((ROOT / 'bench-results').glob('*')) - before:
            shutil.rmtree(made)
    assert result.returncode == 2, result.stderr
    assert f'no registry answers at http://127.0.0.1:{port}/v2/' in result.stderr
    assert 'the benchmark environment did not start' in result.stderr


def test_quick_mirroring_workflows(bench_registry, bench_cache, tmp_path):
    results = tmp_path / 'results'
    result = run_benchmark(bench_registry, bench_cache, results, '--json', '--workflows', 'bulk-mirror,resync',
                           '--image-jobs', '2,4')
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert [(r['workflow'], r['j'], r['J'], r['status']) for r in rows] == [
        ('bulk-mirror', None, 2, 'ok'), ('bulk-mirror', None, 4, 'ok'), ('resync', None, 2, 'ok'),
        ('resync', None, 4, 'ok')]
    assert all(r['mean_s'] > 0 and r['peak_rss_mb'] > 0 for r in rows)
    images = json.loads((results / 'images.json').read_text())
    assert len(images['mirror']['repos']) == 10 and images['mirror']['glob'] == 'quick/mirror-10/*'
    # The fleet was seeded into the source registry with skopeo: exactly the quick size, under its own namespace.
    catalog = bench_registry.client().get('/v2/_catalog', params={'n': 1000}).json()['repositories']
    assert sum(name.startswith('quick/mirror-10/') for name in catalog) == 10
    meta = json.loads((results / 'meta.json').read_text())
    assert meta['mirror_repos'] == 10


def test_remote_source_and_quay_api_seed_nothing(tls_registry, bench_cache, tmp_path, monkeypatch):
    # An image that already exists in a TLS registry of the test bed, reached with --ca-cert as occystrap itself
    # would; a Quay API (the stand-in, over the same registry) that answers every 4th request 429.
    org = 'benchremote%d' % free_port()
    for name in ('a', 'b'):
        # Incompressible, so that the bytes moved per second show in the row's one decimal.
        layout = build_oci_layout(tmp_path / name, layers=[{f'{name}.bin': os.urandom(400_000)}])
        seed_image(tls_registry, f'{org}/{name}', 'latest', layout.path)
    monkeypatch.setenv('SSL_CERT_FILE', str(tls_registry.ca_path))      # the stand-in reads the registry with urllib
    standin = QuayStandin(registry_url=tls_registry.url, throttle_every=4).start()
    results = tmp_path / 'results'
    try:
        result = subprocess.run(
            [str(SCRIPT), '--quick', '--results', str(results), '--json', '--jobs', '2', '--image-jobs', '2',
             '--source', f'registry://{tls_registry.host}/{org}/a:latest', '--ca-cert', str(tls_registry.ca_path),
             '--quay-api', f'{standin.url}/api/v1', '--quay-org', org, '--quay-registry', tls_registry.host,
             '--rate-limit', '50', '--workflows', 'remote-pull,remote-push,remote-quay-info'],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=240,
            env=bench_environment(bench_cache, {'HOME': str(tmp_path / 'home'),
                                                'OCCYSTRAP_CERTS_D': str(tmp_path / 'certs.d')}))
    finally:
        standin.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    source = f'registry://{tls_registry.host}/{org}/a:latest'
    assert [(r['workflow'], r['image'], r['j'], r['J'], r['status']) for r in rows] == [
        ('remote-pull', source, 2, None, 'ok'), ('remote-push', source, 2, None, 'ok'),
        ('remote-quay-info', org, 2, 2, 'ok')]
    for row in rows:
        assert row['mean_s'] > 0 and row['peak_rss_mb'] > 0
    assert rows[0]['mb_per_s'] > 0 and rows[0]['throttled'] == 0 and rows[2]['mb_per_s'] is None
    # The 429s the stand-in sent are the ones the runs counted (every run's --stats-file), and the row has them
    # per run: one run under peakrss.py and one timed.
    counted = [json.loads(p.read_text())['throttled'] for p in (results / 'stats').glob('remote-quay-info-*/*.json')]
    assert len(counted) == 2 and sum(counted) == standin.throttled_count > 0
    assert rows[2]['throttled'] == round(sum(counted) / 2, 1)
    assert 'throttled' in (results / 'results.tsv').read_text().splitlines()[0].split('\t')
    # Nothing was seeded: no image of the benchmark's own in the results, and the TLS registry holds only ours.
    assert json.loads((results / 'images.json').read_text()) == {}
    meta = json.loads((results / 'meta.json').read_text())
    assert meta['remote']['sources'] == [source] and meta['remote']['rate_limit'] == 50


def test_quick_memory_curve(bench_registry, bench_cache, tmp_path):
    results = tmp_path / 'results'
    result = run_benchmark(bench_registry, bench_cache, results, '--json', '--memory-curve', '--curve-repos', '3,5',
                           '--curve-image-jobs', '2')
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert [(r['workflow'], r['repos'], r['J'], r['runs'], r['status']) for r in rows] == [
        ('curve-mirror', 3, 2, 1, 'ok'), ('curve-mirror', 5, 2, 1, 'ok'), ('curve-quay-info', 3, 2, 1, 'ok'),
        ('curve-quay-info', 5, 2, 1, 'ok')]
    assert all(r['mean_s'] > 0 and r['peak_rss_mb'] > 0 for r in rows)
    assert (results / 'memory-curve.png').read_bytes()[:4] == b'\x89PNG' and not (results / 'chart.png').exists()
    # Only the curve's fleets were seeded, each under memcurve-N/, which is also the stand-in's organisation.
    images = json.loads((results / 'images.json').read_text())
    assert set(images) == {'curve', 'tag'} and images['curve']['5']['org'] == 'memcurve-5'
    catalog = bench_registry.client().get('/v2/_catalog', params={'n': 1000}).json()['repositories']
    assert sum(name.startswith('memcurve-5/') for name in catalog) == 5
