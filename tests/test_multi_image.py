"""Many images in one run: quay:// organisations, registry catalog globs, -J, failures and the summary.

A real docker-registry holds an organisation `org` of 36 small images (each with a layer naming its repository),
seeded through the registry API: app-00..app-31 tagged v1, except app-05 and app-20 which are only tagged v2, and
tool-00..03; and broken/ and gone/ for failure tests.
tools/quay_standin.py serves the Quay API over that registry with 8 repositories a page, so listing takes 5 pages.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from occystrap import pipeline
from occystrap.inputs.registry import glob_matches
from occystrap.pipeline import RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.helpers import tree_digests
from tests.services import Registry, build_oci_layout, seed_image
from tools.quay_standin import QuayStandin

pytestmark = pytest.mark.integration

APPS = ['app-%02d' % i for i in range(32)]
V2_ONLY = ('app-05', 'app-20')
TOOLS = ['tool-%02d' % i for i in range(4)]
WITH_V1 = [name for name in APPS if name not in V2_ONLY]
BROKEN = ['app-%d' % i for i in range(6)]
GONE = ['app-%d' % i for i in range(4)]


def layout(tmp, name):
    return build_oci_layout(tmp / name.replace('/', '_'), layers=[
        {'etc': {'type': 'dir'}, 'etc/base.txt': b'shared base layer\n'},
        {'etc/name': ('%s\n' % name).encode()},
    ])


def push_layout(client, name, tag, image):
    """Push an OCI layout with the plain distribution API: blobs already in the registry are mounted, not sent.

    skopeo takes about 0.3 s per image here (two CPUs), so seeding 40 images with it would dominate the tests;
    these few raw API requests do the same in milliseconds, independently of the code under test.
    """
    blobs = image.path / 'blobs' / 'sha256'
    for digest in [image.config_digest] + image.layer_digests:
        if client.head('/v2/%s/blobs/%s' % (name, digest)).status_code == 200:
            continue
        mounted = client.post('/v2/%s/blobs/uploads/' % name, params={'mount': digest, 'from': 'seed/base'})
        if mounted.status_code == 201:
            continue
        assert mounted.status_code == 202, mounted.text
        location = mounted.headers['Location']
        # The location carries upload state in its query: add the digest to it rather than replace it.
        done = client.put('%s%sdigest=%s' % (location, '&' if '?' in location else '?', digest),
                          content=(blobs / digest.split(':')[1]).read_bytes(),
                          headers={'Content-Type': 'application/octet-stream'})
        assert done.status_code == 201, done.text
    manifest = (blobs / image.manifest_digest.split(':')[1]).read_bytes()
    pushed = client.put('/v2/%s/manifests/%s' % (name, tag), content=manifest,
                        headers={'Content-Type': image.manifest['mediaType']})
    assert pushed.status_code == 201, pushed.text
    assert pushed.headers['Docker-Content-Digest'] == image.manifest_digest


def seed(registry, tmp, items):
    """Push (name, tag) pairs; the first with skopeo (the shared base layer lands in seed/base), the rest mounted.

    Returns {name: OciImage}.
    """
    images = {name: layout(tmp, name) for name, _ in items}
    seed_image(registry, 'seed/base', 'v1', layout(tmp, 'seed/base').path)
    with registry.client() as client, concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: push_layout(client, item[0], item[1], images[item[0]]), items))
    return images


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    """The registry with org/, broken/ and gone/ seeded, the Quay stand-in over it, and the images by name."""
    tmp = tmp_path_factory.mktemp('multi')
    with Registry(tmp / 'registry') as registry:
        items = [('org/' + n, 'v2' if n in V2_ONLY else 'v1') for n in APPS] + [('org/' + n, 'v1') for n in TOOLS]
        items += [('broken/' + n, 'v1') for n in BROKEN] + [('gone/' + n, 'v1') for n in GONE]
        images = seed(registry, tmp / 'layouts', items)
        with QuayStandin(registry_url=registry.url, page_size=8) as standin:
            yield registry, standin, images


def quay(standin, registry, path='org/app-*:v1'):
    return 'quay://%s?api=%s/api/v1&registry=%s&insecure=true' % (path, standin.url, registry.host)


def occystrap(*args, timeout=180):
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True,
                          timeout=timeout)


def name_in_image(directory, manifest_name):
    """The content of etc/name in the top layer of an image written by dir://?unique_names=true."""
    with open(os.path.join(directory, manifest_name)) as f:
        entry = json.load(f)[0]
    with tarfile.open(os.path.join(directory, entry['Layers'][-1])) as tar:
        return tar.extractfile('etc/name').read().decode().strip()


def assert_catalog(directory, names, tag='v1'):
    with open(os.path.join(directory, 'catalog.json')) as f:
        catalog = json.load(f)
    assert sorted(catalog) == sorted('%s:%s' % (n, tag) for n in names)
    for reference, manifest_name in catalog.items():
        assert name_in_image(directory, manifest_name) == reference.rsplit(':', 1)[0]


def test_glob_matches_component_by_component():
    assert glob_matches('org/app-1', ['org', 'app-*'])
    assert not glob_matches('org/app-1/sub', ['org', 'app-*'])
    assert not glob_matches('other/app-1', ['org', 'app-*'])
    assert glob_matches('a/b/c', ['*', '*', 'c'])
    assert not glob_matches('org/App-1', ['org', 'app-*'])


def test_quay_glob_process_is_the_same_at_any_image_parallelism(fleet, tmp_path):
    registry, standin, images = fleet
    outputs = {}
    for jobs in ('1', '6'):
        out = tmp_path / ('out-J%s' % jobs)
        result = occystrap('-J', jobs, '-O', 'json', 'process', quay(standin, registry),
                           'dir://%s?unique_names=true' % out)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary['images'] == len(WITH_V1) and summary['failed'] == 0
        assert [r['image'] for r in summary['results']] == ['org/%s:v1' % n for n in WITH_V1]
        assert all(r['ok'] for r in summary['results'])
        assert_catalog(out, ['org/' + n for n in WITH_V1])
        outputs[jobs] = tree_digests(out)
    assert outputs['1'] == outputs['6']
    # Every image shares the base layer; it is stored once.
    base_diffid = images['org/app-00'].diff_ids[0].split(':')[1]
    assert [p for p in outputs['6'] if p.startswith(base_diffid)] == [base_diffid + '/layer.tar']
    assert not [p for p in outputs['6'] if p.split('/')[-1].startswith('.') and p != '.catalog.lock']


def test_text_summary_lists_every_image(fleet, tmp_path):
    registry, standin, _ = fleet
    result = occystrap('process', quay(standin, registry, 'org/app-1*:v1'), 'dir://%s?unique_names=true' % tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ''
    lines = result.stderr.strip().splitlines()
    expected = ['org/app-1%d:v1' % i for i in range(10)]
    assert [line.split()[0] for line in lines[:-1]] == expected
    assert all(line.split()[-1] == 'ok' for line in lines[:-1])
    assert lines[-1].startswith('done: 10 images, 20 layers')


def test_info_check_and_search_over_an_organisation(fleet):
    registry, standin, images = fleet
    result = occystrap('-O', 'json', 'info', quay(standin, registry))
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert [d['reference'] for d in described] == ['org/%s:v1' % n for n in WITH_V1]
    for entry in described:
        image = images[entry['image']]
        assert entry['manifest_digest'] == image.manifest_digest
        assert [layer['diffid'] for layer in entry['layers']] == image.diff_ids

    text = occystrap('-J', '6', 'info', quay(standin, registry, 'org/tool-*'))
    # no tool has the default tag latest
    assert text.returncode == 1 and 'has tag latest' in text.stderr

    checked = occystrap('-J', '6', '-O', 'json', 'check', quay(standin, registry))
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert [r['image'] for r in report] == ['org/%s:v1' % n for n in WITH_V1]
    assert all(r['ok'] and not r['errors'] for r in report)

    found = occystrap('-J', '4', '-O', 'json', 'search', quay(standin, registry, 'org/app-1*:v1'), 'etc/name')
    assert found.returncode == 0, found.stderr
    records = json.loads(found.stdout)
    assert [(r['image'], r['tag'], r['path']) for r in records] == [('org/app-1%d' % i, 'v1', 'etc/name')
                                                                    for i in range(10)]


def test_registry_catalog_glob_picks_the_right_repositories(fleet, tmp_path):
    registry, standin, images = fleet
    source = 'registry://%s/org/app-*:v1?insecure=true' % registry.host
    result = occystrap('-O', 'json', 'info', source)
    assert result.returncode == 0, result.stderr
    assert [d['reference'] for d in json.loads(result.stdout)] == ['org/%s:v1' % n for n in WITH_V1]

    result = occystrap('-O', 'json', 'info', 'registry://%s/org/*-0[0-9]:v2?insecure=true' % registry.host)
    assert result.returncode == 0, result.stderr
    assert [d['reference'] for d in json.loads(result.stdout)] == ['org/app-05:v2']

    out = tmp_path / 'out'
    result = occystrap('-J', '4', 'process', 'registry://%s/org/tool-*:v1?insecure=true' % registry.host,
                       'dir://%s?unique_names=true' % out)
    assert result.returncode == 0, result.stderr
    assert_catalog(out, ['org/' + n for n in TOOLS])

    result = occystrap('info', 'registry://%s/org/nothing-*:v1?insecure=true' % registry.host)
    assert result.returncode == 1 and 'matches org/nothing-*' in result.stderr


def _break_layer(registry, image):
    """Remove the image's own layer from the registry's storage: its manifest still resolves, the blob is gone."""
    digest = image.layer_digests[1].split(':')[1]
    data = registry.storage_dir / 'docker/registry/v2/blobs/sha256' / digest[:2] / digest / 'data'
    data.unlink()


def test_a_failed_image_does_not_stop_the_others(fleet, tmp_path):
    registry, standin, images = fleet
    _break_layer(registry, images['broken/app-3'])
    out = tmp_path / 'out'
    source = quay(standin, registry, 'broken/*:v1')
    result = occystrap('-J', '3', 'process', source, 'dir://%s?unique_names=true' % out)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    table = {line.split()[0]: line for line in lines if line.startswith('broken/')}
    assert sorted(table) == ['broken/%s:v1' % n for n in BROKEN]
    assert 'FAILED' in table['broken/app-3:v1'] and '404' in table['broken/app-3:v1']
    assert all(table[k].endswith(' ok') for k in table if k != 'broken/app-3:v1')
    assert lines[-1].startswith('done: 5 images') and lines[-1].endswith('1 failed')
    assert_catalog(out, ['broken/' + n for n in BROKEN if n != 'app-3'])

    result = occystrap('-O', 'json', 'process', source, 'dir://%s?unique_names=true' % (tmp_path / 'json'))
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary['failed'] == 1 and summary['images'] == 5
    assert [r['image'] for r in summary['results'] if not r['ok']] == ['broken/app-3:v1']

    checked = occystrap('-O', 'json', 'check', source)
    assert checked.returncode == 1
    assert [r['image'] for r in json.loads(checked.stdout) if not r['ok']] == ['broken/app-3:v1']


def test_an_image_deleted_after_resolution_fails_alone(fleet, tmp_path):
    registry, standin, images = fleet
    settings = Settings(image_parallel=4)
    ctx = RunContext(settings)
    try:
        source = pipeline.build_input(parse_uri(quay(standin, registry, 'gone/*:v1'), 'input'), ctx)
        refs = source.references()
        assert [str(r) for r in refs] == ['gone/%s:v1' % n for n in GONE]
        with registry.client() as client:
            response = client.delete('/v2/gone/app-1/manifests/%s' % images['gone/app-1'].manifest_digest)
            assert response.status_code == 202
        output = pipeline.build_output(parse_uri('dir://%s?unique_names=true' % tmp_path, 'output'), ctx)

        def copy(ref):
            image = source.open(ref)
            output.write(image)
            return len(image.layers)

        results = pipeline.for_each_image(source, copy, ctx, refs=refs)
        output.finalize()
    finally:
        ctx.close()
    failed = [r for r in results if not r.ok]
    assert [r.reference for r in failed] == ['gone/app-1:v1']
    assert '404' in failed[0].error and 'gone/app-1' in failed[0].error
    assert sum(r.ok for r in results) == len(GONE) - 1


def test_images_run_concurrently_through_one_client_and_rate_limit(fleet):
    registry, standin, _ = fleet
    rate = 10.0   # low enough to bind even on a slow machine
    ctx = RunContext(Settings(image_parallel=6, rate_limit=rate))
    lock = threading.Lock()
    state = {'now': 0, 'peak': 0}
    try:
        source = pipeline.build_input(parse_uri(quay(standin, registry, 'org/app-1*:v1'), 'input'), ctx)
        refs = source.references()
        before = ctx.http.requests
        started = time.monotonic()

        def open_one(ref):
            with lock:
                state['now'] += 1
                state['peak'] = max(state['peak'], state['now'])
            try:
                image = source.open(ref)
                # Reading every layer makes each image take long enough for the others to overlap with it.
                for layer in image.layers:
                    with layer.open() as stream:
                        while stream.read(65536):
                            pass
                return len(image.layers)
            finally:
                with lock:
                    state['now'] -= 1

        results = pipeline.for_each_image(source, open_one, ctx, refs=refs)
        elapsed = time.monotonic() - started
        requests = ctx.http.requests - before
        http = ctx.http
    finally:
        ctx.close()
    assert all(r.ok for r in results) and len(results) == 10
    assert state['peak'] == 6
    # manifest, config and two layers per image, all through the run's one client...
    assert requests >= 4 * 10
    # ...and its one token bucket: never more than the burst plus `rate` a second, whatever the threads.
    assert requests <= rate * (1 + elapsed) + 1, (requests, elapsed)
    assert http.limiter.waited > 0


def test_map_starts_the_costliest_items_first_and_returns_results_in_order():
    ctx = RunContext(Settings(parallel=2))
    started, release = [], threading.Event()
    lock = threading.Lock()

    def work(item):
        with lock:
            started.append(item)
        if not release.wait(10):
            raise AssertionError('never released')
        return item * 10

    costs = {1: 5, 2: 90, 3: 1, 4: 70, 5: 30}
    with concurrent.futures.ThreadPoolExecutor(1) as runner:
        future = runner.submit(ctx.map, work, [1, 2, 3, 4, 5], cost=costs.get)
        deadline = time.monotonic() + 10
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        # Two workers: the two costliest took them, and nothing else started while they ran.
        assert sorted(started) == [2, 4]
        release.set()
        assert future.result(timeout=10) == [10, 20, 30, 40, 50]
    assert sorted(started[2:]) == [1, 3, 5]
