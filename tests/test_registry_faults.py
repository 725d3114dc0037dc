"""Pulling and pushing through a fault-injecting proxy: dropped connections resume, 429s wait, corruption is caught."""

import gzip
import json
import os
import random
import subprocess
import sys
import time

import pytest

from occystrap.errors import DigestMismatchError, RegistryError
from occystrap.inputs.registry import RegistryInput
from occystrap.pipeline import RunContext
from occystrap.registry.client import RegistryClient
from occystrap.registry.http import ConnectionFailed
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.services import build_oci_layout, seed_image
from tests.helpers import sha256
from tools.delayproxy import FaultProxy, corrupt, drop_after, respond_status

pytestmark = pytest.mark.integration

BIG = 3 * 1024 * 1024


@pytest.fixture(scope='module')
def big_image(tmp_path_factory):
    """An image whose second layer is a 3 MiB blob (random data does not compress)."""
    payload = random.Random(7).randbytes(BIG)
    return build_oci_layout(tmp_path_factory.mktemp('big') / 'layout', layers=[
        {'etc/small': b'small\n'}, {'data/big.bin': payload}])


@pytest.fixture
def seeded(registry, repo_name, big_image):
    seed_image(registry, repo_name, 'v1', big_image.path)
    return repo_name


def open_through(proxy, name, **settings):
    ctx = RunContext(Settings(insecure=True, **settings))
    source = RegistryInput(parse_uri('registry://%s/%s:v1' % (proxy.url.split('://')[1], name), 'input'), ctx)
    return ctx, source, source.open(source.references()[0])


def blob_requests(proxy, digest):
    return [(method, status) for method, path, status, _ in proxy.requests if path.endswith('/blobs/' + digest)]


def test_dropped_download_resumes_with_a_range_request(registry, seeded, big_image):
    layer_digest = big_image.layer_digests[1]
    with FaultProxy(registry.url, [drop_after('/blobs/' + layer_digest, 1_000_000)]) as proxy:
        ctx, source, image = open_through(proxy, seeded)
        try:
            path = image.layers[1].materialize(ctx.workdir)
            assert sha256(open(path, 'rb').read()) == big_image.diff_ids[1]
            assert proxy.hits['drop:/blobs/' + layer_digest] == 1
            # The second request for the blob is a partial one: the download resumed instead of starting over.
            assert blob_requests(proxy, layer_digest) == [('GET', 200), ('GET', 206)]
            assert source.client.resumes == 1
            size = big_image.manifest['layers'][1]['size']
            assert ctx.stats.downloaded == size, 'resumed bytes are not counted twice'
        finally:
            ctx.close()


def test_download_gives_up_when_it_makes_no_progress(registry, seeded, big_image):
    layer_digest = big_image.layer_digests[1]
    with FaultProxy(registry.url, [drop_after('/blobs/' + layer_digest, 0, count=None)]) as proxy:
        ctx, source, image = open_through(proxy, seeded, retries=2)
        try:
            with pytest.raises(ConnectionFailed) as raised:
                image.layers[1].materialize(ctx.workdir)
            assert 'download of blob %s' % layer_digest in str(raised.value)
            assert 'after 2 retries' in str(raised.value)
            assert len(blob_requests(proxy, layer_digest)) == 3
        finally:
            ctx.close()


def test_429_with_retry_after_is_waited_out(registry, seeded, big_image):
    rules = [respond_status('/manifests/', 429, retry_after='1'),
             respond_status('/blobs/' + big_image.layer_digests[0], 503, count=2, retry_after='0')]
    with FaultProxy(registry.url, rules) as proxy:
        started = time.monotonic()
        ctx, source, image = open_through(proxy, seeded)
        try:
            assert time.monotonic() - started >= 1.0
            assert image.manifest_digest == big_image.manifest_digest
            image.layers[0].materialize(ctx.workdir)
            assert list(proxy.hits.values()) == [1, 2]
        finally:
            ctx.close()


def test_429_beyond_the_retries_is_an_error_with_the_registry_reason(registry, seeded):
    with FaultProxy(registry.url, [respond_status('/manifests/', 429, count=None, retry_after='0')]) as proxy:
        with pytest.raises(RegistryError) as raised:
            open_through(proxy, seeded, retries=1)
        assert str(raised.value) == 'registry %s answered 429 for %s:v1 (TOOMANYREQUESTS: injected fault)' % (
            proxy.url.split('://')[1], seeded)
        assert proxy.hits['status:/manifests/'] == 2


def test_corrupted_byte_is_a_digest_mismatch_naming_the_blob(registry, seeded, big_image):
    layer_digest = big_image.layer_digests[1]
    with FaultProxy(registry.url, [corrupt('/blobs/' + layer_digest)]) as proxy:
        ctx, source, image = open_through(proxy, seeded)
        try:
            with pytest.raises(DigestMismatchError) as raised:
                image.layers[1].materialize(ctx.workdir)
            assert raised.value.what == 'blob %s' % layer_digest
            assert os.listdir(ctx.workdir) == [], 'no partial layer file is left behind'
        finally:
            ctx.close()


@pytest.mark.parametrize('index', [1, 0], ids=['streamed-into-tarball', 'materialized'])
def test_cli_exits_1_on_corruption_and_leaves_no_output(registry, seeded, big_image, tmp_path, index):
    # tar:// decompresses the largest layer (1) straight into the tarball and materializes the others first.
    layer_digest = big_image.layer_digests[index]
    destination = tmp_path / 'out'
    destination.mkdir()
    with FaultProxy(registry.url, [corrupt('/blobs/' + layer_digest)]) as proxy:
        result = subprocess.run(
            [sys.executable, '-m', 'occystrap', '--insecure', 'process',
             'registry://%s/%s:v1' % (proxy.url.split('://')[1], seeded), 'tar://%s' % (destination / 'image.tar')],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert errors == ['error: digest mismatch for blob %s: expected %s, got sha256:%s'
                      % (layer_digest, layer_digest, errors[0].rsplit('sha256:', 1)[1])]
    assert os.listdir(destination) == []


def _upload_through(proxy, name, blob):
    ctx = RunContext(Settings(insecure=True))
    try:
        client = RegistryClient(ctx.http, proxy.url.split('://')[1], insecure=True, monolithic_max=100_000,
                                chunk_size=150_000)
        assert client.upload_blob(name, sha256(blob), blob) == sha256(blob)
    finally:
        ctx.close()
    return [path for method, path, _, _ in proxy.requests if method == 'POST']


def _stored(registry, name, digest):
    ctx = RunContext(Settings(insecure=True))
    try:
        return RegistryClient(ctx.http, registry.host, insecure=True).get_blob_bytes(name, digest)
    finally:
        ctx.close()


def test_refused_monolithic_upload_starts_over(registry, repo_name):
    blob = b'a small blob that goes up in one PUT'
    with FaultProxy(registry.url, [respond_status(r'/blobs/uploads/.*digest=', 503, methods=('PUT',),
                                                  retry_after='0')]) as proxy:
        posts = _upload_through(proxy, repo_name, blob)
        assert list(proxy.hits.values()) == [1]
        assert len(posts) == 2, 'a new upload session after the refused PUT'
    assert _stored(registry, repo_name, sha256(blob)) == blob


def test_refused_chunks_resume_from_the_upload_status(registry, repo_name):
    blob = gzip.compress(os.urandom(400_000), compresslevel=1)
    rules = [respond_status(r'/blobs/uploads/', 503, methods=('PATCH',), count=2, retry_after='0'),
             respond_status(r'/blobs/uploads/.*digest=', 503, methods=('PUT',), retry_after='0')]
    with FaultProxy(registry.url, rules) as proxy:
        posts = _upload_through(proxy, repo_name, blob)
        assert list(proxy.hits.values()) == [2, 1]
        # One session throughout: chunks were resent where the registry's upload status said, and the closing
        # PUT (no data) was simply repeated.
        assert len(posts) == 1
        statuses = [method for method, path, _, _ in proxy.requests if '/blobs/uploads/' in path]
        assert statuses.count('GET') == 2 and statuses.count('PATCH') == 3 + 2
    assert _stored(registry, repo_name, sha256(blob)) == blob


def test_429_answers_are_counted_in_the_summary_and_the_stats_file(registry, seeded, tmp_path):
    # Two 429s on the manifest, both retried: the run succeeds, and says how often it was throttled.
    env = {k: v for k, v in os.environ.items() if not k.startswith('OCCYSTRAP_')}
    for command in ('process', 'info'):
        rules = [respond_status('/manifests/', 429, count=2, retry_after='0')]
        stats = tmp_path / f'{command}.json'
        with FaultProxy(registry.url, rules) as proxy:
            source = 'registry://%s/%s:v1' % (proxy.url.split('://')[1], seeded)
            args = [source, 'dir://%s' % (tmp_path / 'out')] if command == 'process' else [source]
            result = subprocess.run([sys.executable, '-m', 'occystrap', '--insecure', '-O', 'json', '--stats-file',
                                     str(stats), command, *args], capture_output=True, text=True, env=env,
                                    stdin=subprocess.DEVNULL, timeout=120)
            assert result.returncode == 0, result.stderr
            assert proxy.hits['status:/manifests/'] == 2
        counters = json.loads(stats.read_text())
        assert counters['schema'] == 1 and counters['throttled'] == 2 and counters['retried'] >= 2
        assert counters['requests'] >= 3
        if command == 'process':
            assert json.loads(result.stdout)['throttled'] == 2 and counters['images'] == 1
