"""Repeating a mirror, a fleet under -J, blobs uploaded once per run, and --dry-run writing nothing.

Requests are counted in the real registry's own access log.
"""

import json
import os

import pytest

from tests.helpers import multi_platform_layout, run_occystrap, sha256
from tests.services import build_oci_layout, seed_image, skopeo_copy, skopeo_inspect
from tools.delayproxy import start_proxy_thread

pytestmark = pytest.mark.integration

WRITES = ('PUT', 'POST', 'PATCH', 'DELETE')


def occystrap(*args, check=True):
    return run_occystrap(*args, check=check)


def catalog(registry):
    with registry.client() as client:
        return client.get('/v2/_catalog').json()['repositories']


@pytest.fixture
def fleet(fresh_registry, tmp_path):
    """Three source repositories fleet/app-N:v1 (two of them indexes, one a plain image), sharing a layer."""
    names = []
    for number in range(2):
        path, _ = multi_platform_layout(tmp_path / ('index-%d' % number), attestation=number == 0)
        skopeo_copy('oci:%s:latest' % path, 'docker://%s/fleet/app-%d:v1' % (fresh_registry.host, number), '--all',
                    '--preserve-digests')
        names.append('fleet/app-%d' % number)
    plain = build_oci_layout(tmp_path / 'plain', [{'common.txt': b'shared by every platform\n'}, {'p': b'p\n'}])
    seed_image(fresh_registry, 'fleet/app-2', 'v1', plain.path)
    names.append('fleet/app-2')
    return fresh_registry, names


def test_a_repeated_mirror_makes_no_blob_request(fleet):
    registry, names = fleet
    source = 'registry://%s/fleet/*:v1?insecure=true' % registry.host
    target = 'registry://%s/mirror?insecure=true' % registry.host
    first = json.loads(occystrap('-J', '3', '-O', 'json', 'process', source, target).stdout)
    assert [r['state'] for r in first['results']] == ['copied'] * 3
    for name, result in zip(names, first['results']):
        raw = skopeo_inspect('docker://%s/mirror/%s:v1' % (registry.host, name.split('/')[1]), raw=True, parse=False)
        assert sha256(raw) == result['source_digest'] == result['destination_digest']

    before = len(registry.access_log())
    again = occystrap('-J', '3', '-O', 'json', 'process', source, target)
    served = registry.access_log()[before:]
    summary = json.loads(again.stdout)
    assert [r['state'] for r in summary['results']] == ['unchanged'] * 3
    assert summary['push']['manifests'] == summary['push']['uploaded'] == summary['push']['mounted'] == 0
    assert [e for e in served if '/blobs/' in e.path] == []
    assert [e for e in served if e.method in WRITES] == []
    for name in names:
        leaf = name.split('/')[1]
        # The catalog glob's tag check (a HEAD) names the digest: the source manifest itself is not fetched.
        assert [e.method for e in served if e.path == '/v2/%s/manifests/v1' % name] == ['HEAD']
        assert [e.method for e in served if e.path == '/v2/mirror/%s/manifests/v1' % leaf] == ['HEAD']
    text = occystrap('process', source, target).stderr
    assert len([line for line in text.splitlines() if '  unchanged sha256:' in line]) == 3
    assert ', 3 unchanged' in text.splitlines()[-1]


def test_a_blob_is_uploaded_once_per_run_and_mounted_after(fleet, registry):
    """Across registries: the layer the fleet shares goes up once, then is mounted into the other repositories."""
    source_registry, names = fleet
    prefix = 'shared-%d' % os.getpid()
    before = len(registry.access_log())
    summary = json.loads(occystrap('-J', '1', '-O', 'json', 'process',
                                   'registry://%s/fleet/*:v1?insecure=true' % source_registry.host,
                                   'registry://%s/%s?insecure=true' % (registry.host, prefix)).stdout)
    uploads = [e for e in registry.access_log()[before:] if e.method == 'PUT' and '/blobs/uploads/' in e.path
               and e.path.startswith('/v2/%s/' % prefix) and e.status == 201]
    mounts = [e for e in registry.access_log()[before:] if e.method == 'POST' and 'mount=' in e.path
              and e.path.startswith('/v2/%s/' % prefix) and e.status == 201]
    digests = [e.path.split('digest=')[1].split('&')[0] for e in uploads]
    assert len(digests) == len(set(digests)), 'a blob was uploaded twice in one run'
    assert sum(r['uploaded'] for r in summary['results']) == len(uploads)
    assert sum(r['mounted'] for r in summary['results']) == len(mounts) >= 1


def test_a_mirror_into_new_repositories_asks_no_blob_and_reuses_connections(fleet, registry):
    """A repository the destination does not know needs no HEAD per blob, and answers read to their end (HEADs,
    empty 202s) leave their connection open for the next request."""
    source_registry, names = fleet
    prefix = 'new-%d' % os.getpid()
    host, port, stop = start_proxy_thread(registry.host)
    try:
        before = len(registry.access_log())
        summary = json.loads(occystrap('-J', '1', '-j', '2', '-O', 'json', 'process',
                                       'registry://%s/fleet/*:v1?insecure=true' % source_registry.host,
                                       'registry://%s:%d/%s?insecure=true' % (host, port, prefix)).stdout)
        connections = stop.proxy.connections
    finally:
        stop()
    served = [e for e in registry.access_log()[before:] if e.path.startswith('/v2/%s/' % prefix)]
    assert [r['state'] for r in summary['results']] == ['copied'] * 3
    assert [e for e in served if e.method == 'HEAD' and '/blobs/' in e.path] == []
    assert len([e for e in served if e.method == 'PUT' and '/blobs/uploads/' in e.path]) == \
        sum(r['uploaded'] for r in summary['results']) > 0
    for name, result in zip(names, summary['results']):
        raw = skopeo_inspect('docker://%s/%s/%s:v1' % (registry.host, prefix, name.split('/')[1]), raw=True,
                             parse=False)
        assert sha256(raw) == result['source_digest'] == result['destination_digest']
    # Two transfers and the metadata requests in flight at most: a few connections for every request, not one each.
    assert len(served) > 20 and connections <= 4, (len(served), connections)


def test_dry_run_writes_nothing(fleet, tmp_path):
    registry, names = fleet
    source = 'registry://%s/fleet/*:v1?insecure=true' % registry.host
    repositories = catalog(registry)
    before = len(registry.access_log())
    result = occystrap('--dry-run', '-O', 'json', 'process', source, 'registry://%s/dry?insecure=true' % registry.host)
    summary = json.loads(result.stdout)
    assert summary['dry_run'] is True
    assert [r['state'] for r in summary['results']] == ['would copy'] * 3
    # The first index: two images of two layers and a config each (one layer shared), an attestation of two blobs.
    assert summary['results'][0]['blobs_to_send'] == 7
    assert summary['results'][0]['platforms'] == ['linux/amd64', 'linux/arm64/v8']
    assert all(r['bytes_to_send'] > 0 for r in summary['results'])
    assert [e for e in registry.access_log()[before:] if e.method in WRITES] == []
    assert catalog(registry) == repositories

    # Nor a file at a destination that would be one.
    out = tmp_path / 'out'
    text = occystrap('--dry-run', 'process', 'registry://%s/fleet/app-0:v1?insecure=true' % registry.host,
                     'dir://%s' % out)
    assert not out.exists() and 'nothing was written' in text.stderr


def test_dry_run_of_a_finished_mirror_says_unchanged(fleet):
    registry, names = fleet
    source = 'registry://%s/fleet/app-1:v1?insecure=true' % registry.host
    target = 'registry://%s/done/app-1:v1?insecure=true' % registry.host
    occystrap('process', source, target)
    entry, = json.loads(occystrap('--dry-run', '-O', 'json', 'process', source, target).stdout)['results']
    assert entry['state'] == 'would be unchanged'
