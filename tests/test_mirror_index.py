"""Mirroring indexes registry to registry: whole and byte for byte, one platform, a subset, filtered, refused.

The source index (two platforms and a BuildKit-style attestation) is built as an OCI layout here and pushed with
`skopeo copy --all`; what arrives is read back with skopeo, never with our own code.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ScriptedServer, multi_platform_layout, run_occystrap, sha256
from tests.services import skopeo_copy, skopeo_inspect

pytestmark = pytest.mark.integration

INDEX_TYPE = 'application/vnd.oci.image.index.v1+json'


def occystrap(*args, check=True):
    return run_occystrap(*args, check=check)


@pytest.fixture
def seeded(reg, repo_name, tmp_path):
    """(registry, source URI, index bytes, index document): a two-platform index with an attestation."""
    path, index = multi_platform_layout(tmp_path / 'layout')
    skopeo_copy('oci:%s:latest' % path, 'docker://%s/%s/src:v1' % (reg.host, repo_name), '--all',
                '--preserve-digests')
    return reg, 'registry://%s/%s/src:v1%s' % (reg.host, repo_name, reg.query), index, json.loads(index)


def dest(reg, repo_name, leaf):
    return 'registry://%s/%s/%s:v1%s' % (reg.host, repo_name, leaf, reg.query), \
        'docker://%s/%s/%s:v1' % (reg.host, repo_name, leaf)


def summary(result):
    payload = json.loads(result.stdout)
    (entry,) = payload['results']
    return entry


def test_whole_index_is_mirrored_with_its_digest(seeded, repo_name, tmp_path):
    reg, source, index, document = seeded
    target, skopeo_ref = dest(reg, repo_name, 'whole')
    entry = summary(occystrap(*reg.flags, '-O', 'json', 'process', source, target))
    raw = skopeo_inspect(skopeo_ref, raw=True, parse=False)
    assert raw == index and sha256(raw) == entry['destination_digest'] == entry['source_digest'] == sha256(index)
    assert entry['state'] == 'copied' and entry['digest_changed'] is False
    assert entry['platforms'] == ['linux/amd64', 'linux/arm64/v8']
    assert entry['manifests'] == 4     # two images, the attestation, the index
    # Every child arrived under its own digest, the attestation included.
    for child in document['manifests']:
        child_ref = skopeo_ref.rsplit(':', 1)[0] + '@' + child['digest']
        assert sha256(skopeo_inspect(child_ref, raw=True, parse=False)) == child['digest']
    # And skopeo reads the whole of it back.
    skopeo_copy(skopeo_ref, 'oci:%s:back' % (tmp_path / 'back'), '--all')
    back = json.loads((tmp_path / 'back' / 'index.json').read_text())
    assert back['manifests'][0]['digest'] == sha256(index)


def test_one_platform_pushes_that_manifest_unchanged(seeded, repo_name):
    reg, source, index, document = seeded
    target, skopeo_ref = dest(reg, repo_name, 'arm')
    result = occystrap(*reg.flags, '-O', 'json', '--platform', 'linux/arm64', 'process', source, target)
    arm = [m for m in document['manifests'] if m['platform']['architecture'] == 'arm64'][0]
    raw = skopeo_inspect(skopeo_ref, raw=True, parse=False)
    assert sha256(raw) == arm['digest'] == summary(result)['destination_digest']
    assert summary(result)['digest_changed'] is False and summary(result)['platforms'] == ['linux/arm64/v8']


def test_two_platforms_make_a_new_index_and_say_so(seeded, repo_name):
    reg, source, index, document = seeded
    target, skopeo_ref = dest(reg, repo_name, 'pair')
    result = occystrap(*reg.flags, '--platform', 'linux/amd64', '--platform', 'linux/arm64', 'process', source,
                       target)
    raw = skopeo_inspect(skopeo_ref, raw=True, parse=False)
    built = json.loads(raw)
    assert sha256(raw) != sha256(index)
    assert [m['digest'] for m in built['manifests']] == [m['digest'] for m in document['manifests'][:2]]
    assert 'digest changed: new index of 2 platforms' in result.stderr
    assert sha256(raw)[:19] in result.stderr


def test_platform_from_the_environment(seeded, repo_name):
    reg, source, index, document = seeded
    target, skopeo_ref = dest(reg, repo_name, 'env')
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith('_proxy')}
    env['OCCYSTRAP_PLATFORM'] = 'linux/amd64,linux/arm64/v8'
    result = subprocess.run([sys.executable, '-m', 'occystrap', *reg.flags, '-O', 'json', 'process', source,
                             target], capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    assert summary(result)['platforms'] == ['linux/amd64', 'linux/arm64/v8']
    assert len(skopeo_inspect(skopeo_ref, raw=True)['manifests']) == 2


def test_a_filter_on_an_index_rewrites_each_platform(seeded, repo_name):
    reg, source, index, document = seeded
    target, skopeo_ref = dest(reg, repo_name, 'filtered')
    entry = summary(occystrap(*reg.flags, '-O', 'json', 'process', '-f', 'normalize-timestamps:ts=0', source,
                              target))
    built = skopeo_inspect(skopeo_ref, raw=True)
    assert entry['digest_changed'] is True and entry['changed'] == 'filtered'
    assert [(m['platform']['os'], m['platform']['architecture']) for m in built['manifests']] == \
        [('linux', 'amd64'), ('linux', 'arm64')]
    assert not {m['digest'] for m in built['manifests']} & {m['digest'] for m in document['manifests']}
    for child in built['manifests']:
        child_ref = skopeo_ref.rsplit(':', 1)[0] + '@' + child['digest']
        config = skopeo_inspect(child_ref, config=True)
        assert config['architecture'] == child['platform']['architecture']


def test_preserve_digests_with_a_filter_fails_before_writing(seeded, repo_name):
    reg, source, index, document = seeded
    target, skopeo_ref = dest(reg, repo_name, 'refused')
    before = len(reg.access_log())
    result = occystrap(*reg.flags, '--preserve-digests', 'process', '-f', 'normalize-timestamps', source, target,
                       check=False)
    assert result.returncode == 1
    assert result.stderr.startswith('error: ') and len(result.stderr.strip().splitlines()) == 1
    assert '--preserve-digests' in result.stderr
    writes = [e for e in reg.access_log()[before:] if e.method in ('PUT', 'POST', 'PATCH')
              and '/%s/refused/' % repo_name in e.path]
    assert writes == []
    with reg.client() as client:
        assert client.get('/v2/%s/refused/tags/list' % repo_name).status_code == 404


def test_preserve_digests_of_a_whole_index_succeeds(seeded, repo_name):
    reg, source, index, document = seeded
    target, skopeo_ref = dest(reg, repo_name, 'kept')
    occystrap(*reg.flags, '--preserve-digests', 'process', source, target)
    assert sha256(skopeo_inspect(skopeo_ref, raw=True, parse=False)) == sha256(index)


def test_one_image_output_picks_a_platform_and_says_which(seeded, tmp_path):
    reg, source, index, document = seeded
    result = occystrap(*reg.flags, 'process', source, 'tar://%s' % (tmp_path / 'amd.tar'))
    assert 'linux/amd64' in result.stderr
    occystrap(*reg.flags, '--platform', 'linux/arm64', 'process', source, 'tar://%s' % (tmp_path / 'arm.tar'))
    config = skopeo_inspect('docker-archive:%s' % (tmp_path / 'arm.tar'), config=True)
    assert config['architecture'] == 'arm64'
    several = occystrap(*reg.flags, '--platform', 'all', 'process', source, 'tar://%s' % (tmp_path / 'x.tar'),
                        check=False)
    assert several.returncode == 2 and 'one --platform' in several.stderr
    assert not (tmp_path / 'x.tar').exists()


def test_info_of_an_index_shows_its_digest_and_platforms(seeded):
    reg, source, index, document = seeded
    text = occystrap(*reg.flags, 'info', source).stdout
    assert sha256(index) in text and 'linux/amd64, linux/arm64/v8' in text
    (described,) = json.loads(occystrap(*reg.flags, '-O', 'json', 'info', source).stdout)
    assert described['index']['digest'] == sha256(index)
    assert described['index']['platforms'] == ['linux/amd64', 'linux/arm64/v8']
    assert described['manifest_digest'] == document['manifests'][0]['digest']


def test_bad_platform_option_is_a_usage_error(seeded):
    reg, source, index, document = seeded
    result = occystrap('--platform', 'linux', 'info', source, check=False)
    assert result.returncode == 2 and 'os/arch' in result.stderr


# --- hostile sources --------------------------------------------------------------------------------------------

def _index_with(child):
    return json.dumps({'schemaVersion': 2, 'mediaType': INDEX_TYPE, 'manifests': [child]}).encode()


def test_a_child_whose_bytes_do_not_match_its_digest_is_refused(registry, repo_name):
    real = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}'
    forged = real.replace(b'"layers":[]', b'"layers":[] ')
    child = {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': sha256(real), 'size': len(real),
             'platform': {'os': 'linux\x1b[31m', 'architecture': 'amd64'}}
    script = [(200, {'Content-Type': INDEX_TYPE}, _index_with(child)),
              (200, {'Content-Type': 'application/vnd.oci.image.manifest.v1+json'}, forged)]
    with ScriptedServer(script) as server:
        result = occystrap('process', 'registry://%s/evil/app:v1?insecure=true' % server.host,
                           'registry://%s/%s/evil:v1?insecure=true' % (registry.host, repo_name), check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith('error: ') and len(result.stderr.strip().splitlines()) == 1
    assert '\x1b' not in result.stderr and 'digest' in result.stderr
    assert not [e for e in registry.access_log() if '/%s/evil/' % repo_name in e.path
                and e.method not in ('GET', 'HEAD')]


def test_a_child_with_a_malformed_digest_is_refused(registry, repo_name):
    child = {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': 'sha256:../../../etc/passwd',
             'size': 10, 'platform': {'os': 'linux', 'architecture': 'amd64'}}
    with ScriptedServer([(200, {'Content-Type': INDEX_TYPE}, _index_with(child))]) as server:
        result = occystrap('process', 'registry://%s/evil/app:v1?insecure=true' % server.host,
                           'registry://%s/%s/bad:v1?insecure=true' % (registry.host, repo_name), check=False)
        requested = [path for _, path, _ in server.seen]
    assert result.returncode == 1 and result.stderr.startswith('error: ')
    assert len(result.stderr.strip().splitlines()) == 1
    assert requested == ['/v2/evil/app/manifests/v1']
    assert not [e for e in registry.access_log() if '/%s/bad/' % repo_name in e.path]


def test_a_platform_in_the_source_uri_picks_one_child(seeded, repo_name):
    reg, source, index, document = seeded
    target, skopeo_ref = dest(reg, repo_name, 'uriarch')
    occystrap(*reg.flags, 'process', source + ('&' if '?' in source else '?') + 'arch=arm64', target)
    arm = [m for m in document['manifests'] if m['platform']['architecture'] == 'arm64'][0]
    assert sha256(skopeo_inspect(skopeo_ref, raw=True, parse=False)) == arm['digest']
