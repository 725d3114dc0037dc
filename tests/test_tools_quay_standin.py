"""Tests for tools/quay_standin.py: the Quay API v1 stand-in over a real registry and over static data."""

import concurrent.futures
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.services import Registry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import imagegen  # noqa: E402
from tools.quay_standin import QuayStandin  # noqa: E402

ORG_REPOS = ['alpha', 'bravo', 'charlie', 'delta', 'echo']


@pytest.fixture(scope='module')
def client():
    """One pooled HTTP client for the module; a new client per request is slow to set up."""
    with httpx.Client(timeout=10) as http:
        yield http


@pytest.fixture(scope='module')
def registry(tmp_path_factory):
    """A real docker-registry of this module's own (tests/services.Registry); yields its URL."""
    with Registry(tmp_path_factory.mktemp('registry')) as reg:
        yield reg.url


@pytest.fixture(scope='module')
def seeded(registry, tmp_path_factory, client):
    """org/<five repos>:latest (plus alpha:v2) and other/zulu, all one tiny image; returns its manifest digest."""
    layout = tmp_path_factory.mktemp('layout') / 'base'
    [info] = imagegen.generate('base', str(layout), scale=0.005)
    result = subprocess.run(['skopeo', 'copy', '--quiet', '--dest-tls-verify=false', f'oci:{layout}:latest',
                             f'docker://{registry[7:]}/org/alpha:latest'], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # The other repositories and tags get the same blobs by cross-repository mount, which is much faster.
    manifest = client.get(f'{registry}/v2/org/alpha/manifests/latest', headers={'Accept': imagegen.OCI_MANIFEST})
    body = json.loads(manifest.content)
    targets = [(f'org/{name}', 'latest') for name in ORG_REPOS[1:]] + [('org/alpha', 'v2'), ('other/zulu', 'latest')]
    for repo, tag in targets:
        for blob in [body['config']] + body['layers']:
            mounted = client.post(f'{registry}/v2/{repo}/blobs/uploads/?mount={blob["digest"]}&from=org/alpha')
            assert mounted.status_code == 201, mounted.text
        put = client.put(f'{registry}/v2/{repo}/manifests/{tag}', content=manifest.content,
                         headers={'Content-Type': imagegen.OCI_MANIFEST})
        assert put.status_code == 201, put.text
    return info.manifest_digest


@pytest.fixture
def standin_factory():
    started = []

    def start(**kwargs):
        standin = QuayStandin(**kwargs).start()
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.stop()


def _list_all(client, base_url, namespace, headers=None):
    pages, token = [], None
    while True:
        params = {'namespace': namespace, 'public': 'true'}
        if token:
            params['next_page'] = token
        response = client.get(f'{base_url}/api/v1/repository', params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body['repositories'])
        token = body.get('next_page')
        if token is None:
            return pages
        assert len(pages) < 50, 'pagination does not end'


def test_lists_an_organisation_in_pages_from_the_registry(seeded, registry, standin_factory, client):
    standin = standin_factory(registry_url=registry, page_size=2)

    pages = _list_all(client, standin.url, 'org')

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [repo['name'] for page in pages for repo in page] == ORG_REPOS
    first = pages[0][0]
    assert first == {'namespace': 'org', 'name': 'alpha', 'description': '', 'is_public': True, 'kind': 'image',
                     'state': 'NORMAL', 'quota': None}
    assert standin.request_count == 3


def test_default_page_size_is_one_hundred(standin_factory, client):
    data = {'big': {f'repo{i:03d}': {'tags': {'latest': {'manifest_digest': 'sha256:' + 'a' * 64}}}
                    for i in range(250)}}
    standin = standin_factory(data=data)

    pages = _list_all(client, standin.url, 'big')

    assert [len(page) for page in pages] == [100, 100, 50]
    assert len({repo['name'] for page in pages for repo in page}) == 250


def test_listing_needs_a_filter(standin_factory, client):
    standin = standin_factory(data={})

    response = client.get(f'{standin.url}/api/v1/repository')

    assert response.status_code == 400
    assert response.json()['error_type'] == 'invalid_request'


def test_tag_checks_report_digests_from_the_registry(seeded, registry, standin_factory, client):
    standin = standin_factory(registry_url=registry)
    url = f'{standin.url}/api/v1/repository/org/alpha/tag/'

    found = client.get(url, params={'specificTag': 'latest', 'onlyActiveTags': 'true'}).json()
    missing = client.get(url, params={'specificTag': 'nope', 'onlyActiveTags': 'true'}).json()
    every = client.get(url, params={'limit': 1}).json()

    [tag] = found['tags']
    assert tag['name'] == 'latest' and tag['manifest_digest'] == seeded
    assert tag['is_manifest_list'] is False and tag['size'] > 0
    assert (found['page'], found['has_additional']) == (1, False)
    assert missing == {'tags': [], 'page': 1, 'has_additional': False}
    assert [t['name'] for t in every['tags']] == ['latest'] and every['has_additional'] is True


def test_repository_lookup_and_missing_repositories(seeded, registry, standin_factory, client):
    standin = standin_factory(registry_url=registry)

    repo = client.get(f'{standin.url}/api/v1/repository/org/bravo')
    missing = client.get(f'{standin.url}/api/v1/repository/org/nothere')
    missing_tags = client.get(f'{standin.url}/api/v1/repository/org/nothere/tag/')

    assert repo.status_code == 200
    assert repo.json()['tags']['latest']['manifest_digest'] == seeded
    assert missing.status_code == 404 and missing_tags.status_code == 404
    assert missing.json()['error_message'] == 'Not Found' and missing.json()['status'] == 404


def test_token_is_enforced(seeded, registry, standin_factory, client):
    standin = standin_factory(registry_url=registry, token='s3cret')
    url = f'{standin.url}/api/v1/repository'
    params = {'namespace': 'org', 'public': 'true'}

    anonymous = client.get(url, params=params)
    wrong = client.get(url, params=params, headers={'Authorization': 'Bearer nope'})
    right = client.get(url, params=params, headers={'Authorization': 'Bearer s3cret'})

    assert anonymous.status_code == wrong.status_code == 401
    assert anonymous.json()['error_type'] == 'invalid_token'
    assert right.status_code == 200 and len(right.json()['repositories']) == 5


def test_delay_applies_per_request_and_requests_overlap(standin_factory, client):
    standin = standin_factory(data={'org': {'a': {}}}, delay_ms=300)
    url = f'{standin.url}/api/v1/repository/org/a'

    def timed_get(_):
        start = time.monotonic()
        status = client.get(url).status_code
        return status, time.monotonic() - start

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(timed_get, range(6)))
    total = time.monotonic() - start

    assert all(status == 200 and elapsed >= 0.3 for status, elapsed in results), results
    # One after another they would take at least 1.8 s.
    assert total < 1.0, total
    assert standin.request_count == 6


def test_rate_limit_answers_429_with_retry_after(standin_factory, client):
    standin = standin_factory(data={'org': {'a': {}}}, rate_limit=3)
    url = f'{standin.url}/api/v1/repository/org/a'

    statuses = [client.get(url) for _ in range(4)]

    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[3].headers['Retry-After'] == '1'


def test_cli_serves_static_data_and_stops_on_sigterm(tmp_path, client):
    data = tmp_path / 'quay.json'
    data.write_text(json.dumps({'org': {'one': {'description': 'first', 'tags': {'v1': {'size': 5}}}}}))
    process = subprocess.Popen([sys.executable, str(ROOT / 'tools' / 'quay_standin.py'), '--data', str(data),
                                '--token', 't'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        assert line.startswith('listening http://127.0.0.1:'), line
        base = line.split()[1]
        response = client.get(f'{base}/api/v1/repository/org/one/tag/', params={'specificTag': 'v1'},
                              headers={'Authorization': 'Bearer t'})
        assert response.status_code == 200
        assert [tag['name'] for tag in response.json()['tags']] == ['v1']
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_throttle_every_answers_every_nth_request_429(standin_factory, client):
    standin = standin_factory(data={'org': {'a': {}}}, throttle_every=3)
    url = f'{standin.url}/api/v1/repository/org/a'

    statuses = [client.get(url) for _ in range(7)]

    assert [r.status_code for r in statuses] == [200, 200, 429, 200, 200, 429, 200]
    assert statuses[2].headers['Retry-After'] == '0'
    assert standin.throttled_count == 2 and standin.request_count == 7
