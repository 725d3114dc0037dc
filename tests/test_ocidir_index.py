"""Whole indexes into OCI layouts (ocidir:// and tar://?format=oci) and back: the layout names the source index by
its ref, with the source digest; one platform is that child's manifest; a repeat is unchanged; hostile layouts and
sources are one line and leave the layout as it was.

The source index (two platforms and a BuildKit-style attestation) is built as an OCI layout and pushed with
`skopeo copy --all`; what we write is read with skopeo (oci:, oci-archive:), umoci and sha256 of the bytes.
"""

import hashlib
import json
import os
import subprocess

import pytest

from tests.helpers import ScriptedServer, multi_platform_layout, run_occystrap, sha256, tree_digests
from tests.services import skopeo_copy, skopeo_inspect

pytestmark = pytest.mark.integration

INDEX_TYPE = 'application/vnd.oci.image.index.v1+json'
MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json'


def occystrap(*args, check=True):
    return run_occystrap(*args, check=check)


def summary(result):
    (entry,) = json.loads(result.stdout)['results']
    return entry


def assert_one_line(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in result.stderr, result.stderr
    assert '\x1b' not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def index_json(layout):
    return json.loads((layout / 'index.json').read_bytes())


def entry_for(layout, ref):
    (entry,) = [m for m in index_json(layout)['manifests']
                if (m.get('annotations') or {}).get('org.opencontainers.image.ref.name') == ref]
    return entry


def assert_blobs_match_their_names(layout):
    blobs = layout / 'blobs' / 'sha256'
    for name in os.listdir(blobs):
        assert hashlib.sha256((blobs / name).read_bytes()).hexdigest() == name
    assert sorted(os.listdir(layout)) == ['blobs', 'index.json', 'oci-layout']
    return set(os.listdir(blobs))


def snapshot(layout):
    """Every file of a layout with its bytes' digest: what 'left as it was' compares."""
    found = {}
    for root, dirs, files in os.walk(layout):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, layout)] = None if os.path.isdir(path) else sha256(open(path, 'rb').read())
    return found


@pytest.fixture
def seeded(registry, repo_name, tmp_path):
    """(registry URI of a two-platform index with an attestation, the index bytes, its document, the source
    layout skopeo pushed it from)."""
    path, index = multi_platform_layout(tmp_path / 'layout')
    skopeo_copy('oci:%s:latest' % path, 'docker://%s/%s/src:v1' % (registry.host, repo_name), '--all',
                '--preserve-digests')
    return 'registry://%s/%s/src:v1?insecure=true' % (registry.host, repo_name), index, json.loads(index), path


def test_a_whole_index_goes_into_a_layout_with_its_digest(seeded, tmp_path):
    source, index, document, layout = seeded
    out = tmp_path / 'out'
    result = occystrap('-O', 'json', 'process', source, 'ocidir://%s' % out)
    entry = summary(result)
    assert 'warning' not in result.stderr.lower()
    assert entry['state'] == 'copied' and entry['digest_changed'] is False
    assert entry['source_digest'] == entry['destination_digest'] == sha256(index)
    assert entry['platforms'] == ['linux/amd64', 'linux/arm64/v8'] and entry['manifests'] == 4
    # index.json names the index by the source tag, with the source's digest; skopeo reads the same bytes.
    named = entry_for(out, 'v1')
    assert named['digest'] == sha256(index) and named['mediaType'] == INDEX_TYPE and named['size'] == len(index)
    raw = skopeo_inspect('oci:%s:v1' % out, raw=True, parse=False)
    assert raw == index and sha256(raw) == sha256(index)
    # Every blob and manifest of every child, stored once under its own digest: the source layout's blobs exactly.
    blobs = assert_blobs_match_their_names(out)
    assert tree_digests(out / 'blobs') == tree_digests(layout / 'blobs')
    assert entry['uploaded'] == len(blobs) - 4     # configs and layers; the four manifests are counted apart
    # skopeo copies the whole of it out of the layout, digests kept; umoci unpacks the arm64 image.
    skopeo_copy('oci:%s:v1' % out, 'oci:%s:back' % (tmp_path / 'back'), '--all', '--preserve-digests')
    assert entry_for(tmp_path / 'back', 'back')['digest'] == sha256(index)
    arm = [m for m in document['manifests'] if (m.get('platform') or {}).get('architecture') == 'arm64'][0]
    skopeo_copy('oci:%s:v1' % out, 'oci:%s:arm' % (tmp_path / 'arm'), '--override-arch', 'arm64',
                '--preserve-digests')
    assert entry_for(tmp_path / 'arm', 'arm')['digest'] == arm['digest']
    unpacked = subprocess.run(['umoci', 'unpack', '--rootless', '--image', '%s:arm' % (tmp_path / 'arm'),
                               str(tmp_path / 'bundle')], capture_output=True, text=True)
    assert unpacked.returncode == 0, unpacked.stderr
    assert (tmp_path / 'bundle' / 'rootfs' / 'arch.txt').read_text() == 'arm64 1\n'


def test_a_repeat_is_unchanged_and_dry_run_counts_what_is_missing(seeded, registry, tmp_path):
    source, index, document, layout = seeded
    out = tmp_path / 'out'
    dry = summary(occystrap('-O', 'json', '--dry-run', 'process', source, 'ocidir://%s' % out))
    assert dry['state'] == 'would copy' and dry['blobs_to_send'] == len(os.listdir(layout / 'blobs' / 'sha256')) - 4
    assert not out.exists()
    occystrap('process', source, 'ocidir://%s' % out)
    before = snapshot(out)
    logged = len(registry.access_log())
    again = summary(occystrap('-O', 'json', 'process', source, 'ocidir://%s' % out))
    assert again['state'] == 'unchanged' and again['destination_digest'] == sha256(index)
    # One request: the index itself; no child, no blob was asked for, and the layout is as it was.
    requests = [(e.method, e.path) for e in registry.access_log()[logged:] if e.path != '/v2/']
    assert len(requests) == 1 and requests[0][0] == 'GET' and requests[0][1].endswith('/src/manifests/v1'), requests
    assert snapshot(out) == before
    assert summary(occystrap('-O', 'json', '--dry-run', 'process', source,
                             'ocidir://%s' % out))['state'] == 'would be unchanged'
    # A second name for the same index in the same layout stores nothing new.
    named = summary(occystrap('-O', 'json', 'process', source, 'ocidir://%s?ref=other' % out))
    assert named['state'] == 'copied' and named['uploaded'] == 0 and named['present'] > 0
    assert entry_for(out, 'other')['digest'] == entry_for(out, 'v1')['digest'] == sha256(index)


def test_one_platform_is_that_child_and_two_are_a_new_index(seeded, tmp_path):
    source, index, document, layout = seeded
    arm = [m for m in document['manifests'] if (m.get('platform') or {}).get('architecture') == 'arm64'][0]
    out = tmp_path / 'out'
    one = summary(occystrap('-O', 'json', '--platform', 'linux/arm64', 'process', source, 'ocidir://%s' % out))
    assert one['destination_digest'] == arm['digest'] and one['digest_changed'] is False
    assert entry_for(out, 'v1')['digest'] == arm['digest'] and entry_for(out, 'v1')['mediaType'] == MANIFEST_TYPE
    assert sha256(skopeo_inspect('oci:%s:v1' % out, raw=True, parse=False)) == arm['digest']
    assert skopeo_inspect('oci:%s:v1' % out, config=True)['architecture'] == 'arm64'
    pair = summary(occystrap('-O', 'json', '--platform', 'linux/amd64', '--platform', 'linux/arm64', 'process',
                             source, 'ocidir://%s?ref=pair' % out))
    assert pair['digest_changed'] is True and pair['changed'] == 'new index of 2 platforms'
    raw = skopeo_inspect('oci:%s:pair' % out, raw=True, parse=False)
    assert sha256(raw) == pair['destination_digest'] != sha256(index)
    assert [m['digest'] for m in json.loads(raw)['manifests']] == [m['digest'] for m in document['manifests'][:2]]
    assert_blobs_match_their_names(out)


def test_a_filter_rewrites_each_platform_into_a_new_index(seeded, tmp_path):
    source, index, document, layout = seeded
    out = tmp_path / 'out'
    entry = summary(occystrap('-O', 'json', 'process', '-f', 'normalize-timestamps:ts=0', source,
                              'ocidir://%s' % out))
    assert entry['changed'] == 'filtered' and entry['platforms'] == ['linux/amd64', 'linux/arm64/v8']
    built = json.loads(skopeo_inspect('oci:%s:v1' % out, raw=True, parse=False))
    assert sha256(skopeo_inspect('oci:%s:v1' % out, raw=True, parse=False)) == entry['destination_digest']
    assert [m['platform']['architecture'] for m in built['manifests']] == ['amd64', 'arm64']
    assert not {m['digest'] for m in built['manifests']} & {m['digest'] for m in document['manifests']}
    # --compression does not apply to a layout (layers are stored as they came): nothing claims a recompression.
    same = summary(occystrap('-O', 'json', '--compression', 'zstd', 'process', source, 'ocidir://%s?ref=z' % out))
    assert same['destination_digest'] == sha256(index) and same['digest_changed'] is False
    skopeo_copy('oci:%s:v1' % out, 'oci:%s:x' % (tmp_path / 'check'), '--all', '--preserve-digests')


def test_an_oci_archive_holds_the_index_with_its_digest(seeded, tmp_path):
    source, index, document, layout = seeded
    archive = tmp_path / 'multi.tar'
    entry = summary(occystrap('-O', 'json', 'process', source, 'tar://%s?format=oci' % archive))
    assert entry['destination_digest'] == entry['source_digest'] == sha256(index)
    raw = skopeo_inspect('oci-archive:%s:v1' % archive, raw=True, parse=False)
    assert raw == index
    skopeo_copy('oci-archive:%s:v1' % archive, 'oci:%s:out' % (tmp_path / 'unpacked'), '--all',
                '--preserve-digests')
    assert entry_for(tmp_path / 'unpacked', 'out')['digest'] == sha256(index)
    listed = subprocess.run(['tar', '-tf', str(archive)], capture_output=True, text=True, check=True).stdout.split()
    stored = [n for n in listed if n.startswith('blobs/sha256/') and n != 'blobs/sha256/']
    assert len(stored) == len(set(stored)) == len(os.listdir(layout / 'blobs' / 'sha256'))
    # The docker-archive format holds one image: a platform is still picked there.
    one = occystrap('process', source, 'tar://%s' % (tmp_path / 'docker.tar'))
    assert 'linux/amd64' in one.stderr


def test_a_round_trip_through_a_layout_keeps_the_index_digest(seeded, registry, repo_name, tmp_path):
    source, index, document, layout = seeded
    out = tmp_path / 'out'
    occystrap('process', source, 'ocidir://%s' % out)
    back = occystrap('-O', 'json', 'process', 'ocidir://%s?ref=v1' % out,
                     'registry://%s/%s/back:v2?insecure=true' % (registry.host, repo_name))
    assert summary(back)['destination_digest'] == sha256(index) and summary(back)['manifests'] == 4
    served = skopeo_inspect('docker://%s/%s/back:v2' % (registry.host, repo_name), raw=True, parse=False)
    assert served == index
    for child in document['manifests']:
        child_ref = 'docker://%s/%s/back@%s' % (registry.host, repo_name, child['digest'])
        assert sha256(skopeo_inspect(child_ref, raw=True, parse=False)) == child['digest']
    # And layout to layout: the same index under another name.
    occystrap('process', 'ocidir://%s?ref=v1' % out, 'ocidir://%s?ref=copy' % (tmp_path / 'again'))
    assert entry_for(tmp_path / 'again', 'copy')['digest'] == sha256(index)
    assert tree_digests(tmp_path / 'again' / 'blobs') == tree_digests(out / 'blobs')
    # One platform of the layout's index still goes to a destination that holds one image.
    occystrap('--platform', 'linux/arm64', 'process', 'ocidir://%s?ref=v1' % out, 'tar://%s' % (tmp_path / 'a.tar'))
    assert skopeo_inspect('docker-archive:%s' % (tmp_path / 'a.tar'), config=True)['architecture'] == 'arm64'


def test_a_docker_manifest_list_is_made_oci_and_says_so(registry, repo_name, tmp_path):
    """skopeo 1.9 does not find an index.json entry of a Docker type, so a Docker manifest list is stored as an OCI
    index of OCI manifests (as skopeo's own copy to oci: stores it); the blobs are unchanged, the digest changes and
    the outcome and a warning say so; --preserve-digests refuses it before writing."""
    path, _ = multi_platform_layout(tmp_path / 'layout', attestation=False)
    skopeo_copy('oci:%s:latest' % path, 'docker://%s/%s/dlist:v1' % (registry.host, repo_name), '--all',
                '--format', 'v2s2')
    source = 'registry://%s/%s/dlist:v1?insecure=true' % (registry.host, repo_name)
    docker = skopeo_inspect('docker://%s/%s/dlist:v1' % (registry.host, repo_name), raw=True, parse=False)
    assert json.loads(docker)['mediaType'] == 'application/vnd.docker.distribution.manifest.list.v2+json'
    out = tmp_path / 'out'
    refused = occystrap('--preserve-digests', 'process', source, 'ocidir://%s' % out, check=False)
    assert_one_line(refused, '--preserve-digests', 'converted to OCI')
    assert not out.exists()
    result = occystrap('-O', 'json', 'process', source, 'ocidir://%s' % out)
    entry = summary(result)
    raw = skopeo_inspect('oci:%s:v1' % out, raw=True, parse=False)
    made = json.loads(raw)
    assert entry['changed'] == 'converted to OCI' and entry['destination_digest'] == sha256(raw) != sha256(docker)
    assert sha256(docker) in result.stderr and sha256(raw) in result.stderr
    assert made['mediaType'] == INDEX_TYPE and {m['mediaType'] for m in made['manifests']} == {MANIFEST_TYPE}
    assert [m['platform'] for m in made['manifests']] == [m['platform'] for m in json.loads(docker)['manifests']]
    assert_blobs_match_their_names(out)
    skopeo_copy('oci:%s:v1' % out, 'oci:%s:x' % (tmp_path / 'check'), '--all', '--preserve-digests')
    # The stored digest is known before writing, so a repeat is unchanged.
    again = summary(occystrap('-O', 'json', 'process', source, 'ocidir://%s' % out))
    assert again['state'] == 'unchanged' and again['destination_digest'] == sha256(raw)


# --- hostile layouts and sources ----------------------------------------------------------------------------------

@pytest.mark.parametrize('mangle, fragment', [
    (lambda doc: doc['manifests'][0].update(digest='sha256:../../../etc/passwd'), 'digest'),
    (lambda doc: doc['manifests'][0].update(size=-1), 'size'),
    (lambda doc: doc.update(manifests={'a': 1}), 'manifests'),
])
def test_an_existing_layout_with_a_bad_index_json_is_left_as_it_was(seeded, tmp_path, mangle, fragment):
    source, index, document, layout = seeded
    out = tmp_path / 'out'
    occystrap('--platform', 'linux/amd64', 'process', source, 'ocidir://%s?ref=old' % out)
    doc = index_json(out)
    mangle(doc)
    (out / 'index.json').write_text(json.dumps(doc))
    before = snapshot(out)
    assert_one_line(occystrap('process', source, 'ocidir://%s' % out, check=False), fragment)
    assert snapshot(out) == before


def test_a_ref_with_control_characters_is_refused_before_anything_is_written(seeded, tmp_path):
    source, index, document, layout = seeded
    out = tmp_path / 'out'
    result = occystrap('process', source, 'ocidir://%s?ref=v1%%1b%%5b31m' % out, check=False)
    assert result.returncode == 2 and '\x1b' not in result.stderr and 'bad ref' in result.stderr
    assert not out.exists()


def test_a_source_index_whose_child_lies_writes_no_name(registry, tmp_path):
    real = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}'
    forged = real.replace(b'"layers":[]', b'"layers":[] ')
    child = {'mediaType': MANIFEST_TYPE, 'digest': sha256(real), 'size': len(real),
             'platform': {'os': 'linux', 'architecture': 'amd64'}}
    listing = json.dumps({'schemaVersion': 2, 'mediaType': INDEX_TYPE, 'manifests': [child]}).encode()
    out = tmp_path / 'out'
    (out / 'blobs' / 'sha256').mkdir(parents=True)
    (out / 'oci-layout').write_text('{"imageLayoutVersion":"1.0.0"}')
    (out / 'index.json').write_text('{"schemaVersion":2,"manifests":[]}')
    before = snapshot(out)
    script = [(200, {'Content-Type': INDEX_TYPE}, listing), (200, {'Content-Type': MANIFEST_TYPE}, forged)]
    with ScriptedServer(script) as server:
        result = occystrap('process', 'registry://%s/evil/app:v1?insecure=true' % server.host, 'ocidir://%s' % out,
                           check=False)
    assert_one_line(result, 'digest')
    assert snapshot(out) == before


def test_a_layout_index_whose_child_lies_pushes_no_manifest(seeded, registry, repo_name, tmp_path):
    source, index, document, layout = seeded
    out = tmp_path / 'out'
    occystrap('process', source, 'ocidir://%s' % out)
    child = out / 'blobs' / 'sha256' / document['manifests'][1]['digest'].split(':', 1)[1]
    data = child.read_bytes()
    child.chmod(0o644)
    child.write_bytes(data.replace(b'"schemaVersion":2', b'"schemaVersion":3'))
    target = 'registry://%s/%s/liar:v1?insecure=true' % (registry.host, repo_name)
    logged = len(registry.access_log())
    assert_one_line(occystrap('process', 'ocidir://%s?ref=v1' % out, target, check=False), 'does not match')
    assert not [e for e in registry.access_log()[logged:] if '/liar/manifests/' in e.path and e.method == 'PUT']
