"""ocidir:// in and out: OCI image layouts that skopeo (oci:PATH:REF), umoci and podman read, digests recomputed
from the bytes; many images and runs in one layout; hostile layouts as a source; what a failed run leaves."""

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from tests.helpers import legacy_members, sha256, tree_digests, write_tar
from tests.services import build_oci_layout, layer_tar, seed_image, skopeo_copy, skopeo_inspect

LAYERS = [{'etc': {'type': 'dir'}, 'etc/hello.txt': b'hello from an ocidir test\n'},
          {'usr/bin/tool': {'type': 'file', 'data': b'#!/bin/sh\necho tool\n', 'mode': 0o755}}]
MARKER = 'occystrap-ocidir-marker'


def occystrap(*args):
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith('_proxy')}
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL, env=env)


def ok(*args):
    result = occystrap(*args)
    assert result.returncode == 0, result.stderr
    return result


def assert_one_line(result, status, *fragments):
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in result.stderr, result.stderr
    assert '\x1b' not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def index_of(layout):
    return json.loads((layout / 'index.json').read_bytes())


def refs_of(layout):
    return [(m.get('annotations') or {}).get('org.opencontainers.image.ref.name')
            for m in index_of(layout)['manifests']]


def assert_blobs_match_their_names(layout):
    """Every blob's bytes hash to the name it is stored under, and nothing but blobs and the two files is there."""
    names = sorted(os.listdir(layout))
    assert names == ['blobs', 'index.json', 'oci-layout'], names
    assert json.loads((layout / 'oci-layout').read_bytes()) == {'imageLayoutVersion': '1.0.0'}
    blobs = layout / 'blobs' / 'sha256'
    for name in os.listdir(blobs):
        assert hashlib.sha256((blobs / name).read_bytes()).hexdigest() == name
    return set(os.listdir(blobs))


def umoci_unpack(layout, ref, bundle):
    result = subprocess.run(['umoci', 'unpack', '--rootless', '--image', '%s:%s' % (layout, ref), str(bundle)],
                            capture_output=True, text=True)
    assert result.returncode == 0, 'umoci unpack failed: %s' % result.stderr
    return bundle / 'rootfs'


@pytest.fixture
def image(tmp_path):
    return build_oci_layout(tmp_path / 'src', LAYERS, tag='v1')


# --- out: checked by skopeo, umoci, podman ------------------------------------------------------------------------

@pytest.mark.integration
def test_registry_to_ocidir_keeps_every_digest(registry, repo_name, image, tmp_path):
    pushed = seed_image(registry, repo_name, 'v1', image.path)
    registry_manifest = skopeo_inspect('docker://%s/%s:v1' % (registry.host, repo_name), raw=True, parse=False)
    assert sha256(registry_manifest) == pushed
    out = tmp_path / 'out'
    result = ok('--insecure', 'process', 'registry://%s/%s:v1' % (registry.host, repo_name), 'ocidir://%s' % out)
    assert 'warning' not in result.stderr

    blobs = assert_blobs_match_their_names(out)
    assert refs_of(out) == ['v1']
    # skopeo reads the layout and finds the registry's exact manifest: same bytes, so the same digest
    raw = skopeo_inspect('oci:%s:v1' % out, raw=True, parse=False)
    assert raw == registry_manifest and sha256(raw) == pushed
    document = json.loads(raw)
    named = {d['digest'] for d in document['layers']} | {document['config']['digest'], pushed}
    assert {digest.split(':')[1] for digest in named} == blobs
    # compressed blobs as they came: the registry's layer digests, which are the source layout's
    assert [d['digest'] for d in document['layers']] == image.layer_digests
    config = skopeo_inspect('oci:%s:v1' % out, config=True, raw=True, parse=False)
    assert sha256(config) == image.config_digest
    rootfs = umoci_unpack(out, 'v1', tmp_path / 'bundle')
    assert (rootfs / 'etc' / 'hello.txt').read_bytes() == b'hello from an ocidir test\n'
    assert os.access(rootfs / 'usr' / 'bin' / 'tool', os.X_OK)


@pytest.mark.integration
def test_a_docker_manifest_becomes_oci_with_its_blobs_unchanged(registry, repo_name, image, tmp_path):
    """skopeo, umoci and podman read only OCI manifests from a layout, so a Docker schema 2 image gets one (as
    skopeo's own copy to oci: does); the blobs keep their digests and a warning names both manifest digests."""
    pushed = seed_image(registry, repo_name, 'v1', image.path, '--format', 'v2s2')
    docker_manifest = json.loads(skopeo_inspect('docker://%s/%s:v1' % (registry.host, repo_name), raw=True,
                                                parse=False))
    assert docker_manifest['mediaType'] == 'application/vnd.docker.distribution.manifest.v2+json'
    out = tmp_path / 'out'
    result = ok('--insecure', 'process', 'registry://%s/%s:v1' % (registry.host, repo_name), 'ocidir://%s' % out)
    raw = skopeo_inspect('oci:%s:v1' % out, raw=True, parse=False)
    assert 'not the source\'s Docker manifest %s' % pushed in result.stderr and sha256(raw) in result.stderr
    manifest = json.loads(raw)
    assert manifest['mediaType'] == 'application/vnd.oci.image.manifest.v1+json'
    assert [d['digest'] for d in manifest['layers']] == [d['digest'] for d in docker_manifest['layers']]
    assert manifest['config']['digest'] == docker_manifest['config']['digest'] == image.config_digest
    assert_blobs_match_their_names(out)
    rootfs = umoci_unpack(out, 'v1', tmp_path / 'bundle')
    assert (rootfs / 'etc' / 'hello.txt').read_bytes() == b'hello from an ocidir test\n'


@pytest.mark.integration
def test_our_layout_goes_to_a_registry_with_skopeo_and_back(registry, repo_name, image, tmp_path):
    """ocidir out -> skopeo copy oci: -> registry -> ocidir in: the manifest digest survives every step."""
    out = tmp_path / 'out'
    ok('process', 'ocidir://%s?ref=v1' % image.path, 'ocidir://%s?ref=first' % out)
    assert skopeo_inspect('oci:%s:first' % out)['Digest'] == image.manifest_digest
    skopeo_copy('oci:%s:first' % out, 'docker://%s/%s:copied' % (registry.host, repo_name))
    served = skopeo_inspect('docker://%s/%s:copied' % (registry.host, repo_name), raw=True, parse=False)
    assert sha256(served) == image.manifest_digest
    # ocidir in -> registry out: our push keeps the digest too
    ok('--insecure', 'process', 'ocidir://%s?ref=first' % out, 'registry://%s/%s:ours' % (registry.host, repo_name))
    served = skopeo_inspect('docker://%s/%s:ours' % (registry.host, repo_name), raw=True, parse=False)
    assert sha256(served) == image.manifest_digest
    back = tmp_path / 'back'
    ok('--insecure', 'process', 'registry://%s/%s:copied' % (registry.host, repo_name), 'ocidir://%s' % back)
    assert refs_of(back) == ['copied']
    assert sha256(skopeo_inspect('oci:%s:copied' % back, raw=True, parse=False)) == image.manifest_digest
    assert tree_digests(back / 'blobs') == tree_digests(image.path / 'blobs')


@pytest.mark.integration
def test_podman_pulls_our_layout(podman_service, image):
    # podman names what it pulls from oci:PATH after PATH, which must then be a valid image name
    parent = '/tmp/occystrap-podman-%d-%s' % (os.getpid(), secrets.token_hex(4))
    os.mkdir(parent)
    out = os.path.join(parent, 'layout')
    try:
        ok('process', 'ocidir://%s' % image.path, 'ocidir://%s?ref=podman' % out)
        podman_service.podman('pull', 'oci:%s:podman' % out)
        listed = json.loads(podman_service.podman('images', '--format', 'json').stdout)
        pulled = [i for i in listed
                  if any(parent in name for name in (i.get('Names') or []) + (i.get('RepoDigests') or []))]
        assert len(pulled) == 1, listed
        inspect = json.loads(podman_service.podman('image', 'inspect', pulled[0]['Id']).stdout)[0]
        assert inspect['RootFS']['Layers'] == image.diff_ids
        assert 'sha256:' + pulled[0]['Id'] == image.config_digest
        podman_service.podman('rmi', pulled[0]['Id'], check=False)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.integration
def test_a_filtered_image_is_a_new_manifest_that_umoci_reads(image, tmp_path):
    out = tmp_path / 'out'
    ok('process', 'ocidir://%s' % image.path, 'ocidir://%s?ref=stamped' % out, '-f', 'normalize-timestamps:ts=7')
    assert_blobs_match_their_names(out)
    inspected = skopeo_inspect('oci:%s:stamped' % out)
    assert inspected['Digest'] != image.manifest_digest and inspected['Created'].startswith('1970-01-01T00:00:07')
    raw = json.loads(skopeo_inspect('oci:%s:stamped' % out, raw=True, parse=False))
    # rewritten layers are stored uncompressed: their blob digests are the diffids the config lists
    config = skopeo_inspect('oci:%s:stamped' % out, config=True)
    assert [d['digest'] for d in raw['layers']] == config['rootfs']['diff_ids']
    assert {d['mediaType'] for d in raw['layers']} == {'application/vnd.oci.image.layer.v1.tar'}
    rootfs = umoci_unpack(out, 'stamped', tmp_path / 'bundle')
    assert os.stat(rootfs / 'etc' / 'hello.txt').st_mtime == 7


# --- many images, many runs ---------------------------------------------------------------------------------------

def test_many_images_share_one_layout_and_blobs_are_stored_once(image, tmp_path):
    other = build_oci_layout(tmp_path / 'other', LAYERS[:1] + [{'other': b'another top layer\n'}], tag='v2')
    out = tmp_path / 'out'
    ok('process', 'ocidir://%s' % image.path, 'ocidir://%s' % out)
    ok('process', 'ocidir://%s' % other.path, 'ocidir://%s' % out)
    ok('process', 'ocidir://%s' % image.path, 'ocidir://%s?ref=again' % out)
    blobs = assert_blobs_match_their_names(out)
    # the shared bottom layer once: 2 + 1 layers, 2 configs, 2 manifests
    assert len(blobs) == 7
    assert refs_of(out) == ['v1', 'v2', 'again']
    for ref, built in (('v1', image), ('v2', other), ('again', image)):
        assert skopeo_inspect('oci:%s:%s' % (out, ref))['Digest'] == built.manifest_digest

    # a later image under a taken ref replaces that entry (the name moves; the others stay)
    ok('process', 'ocidir://%s' % other.path, 'ocidir://%s?ref=v1' % out)
    assert refs_of(out) == ['v2', 'again', 'v1']
    assert skopeo_inspect('oci:%s:v1' % out)['Digest'] == other.manifest_digest

    # every image of the layout is a multi-image source, read back by ocidir:// and copied whole
    copy = tmp_path / 'copy'
    result = ok('-O', 'json', 'process', 'ocidir://%s' % out, 'ocidir://%s' % copy)
    assert sorted(refs_of(copy)) == ['again', 'v1', 'v2']
    assert tree_digests(copy / 'blobs') == tree_digests(out / 'blobs')
    assert json.loads(result.stdout)['images'] == 3 and json.loads(result.stdout)['failed'] == 0


def test_ocidir_source_by_ref_and_its_one_line_errors(image, tmp_path):
    out = tmp_path / 'out'
    ok('process', 'ocidir://%s' % image.path, 'ocidir://%s?ref=a' % out)
    ok('process', 'ocidir://%s' % image.path, 'ocidir://%s?ref=b' % out)
    report = json.loads(ok('-O', 'json', 'info', 'ocidir://%s?ref=b' % out).stdout)
    assert [(r['reference'], r['manifest_digest']) for r in report] == [('out:b', image.manifest_digest)]
    assert_one_line(occystrap('info', 'ocidir://%s?ref=nope' % out), 1, "has no image named 'nope'", "'a', 'b'")
    assert_one_line(occystrap('info', 'ocidir://%s?ref=../x' % out), 2, "bad ref '../x'")
    assert_one_line(occystrap('info', 'ocidir://%s' % (tmp_path / 'absent')), 1, 'does not exist')
    assert_one_line(occystrap('process', 'ocidir://%s' % out, 'ocidir://%s?ref=one' % (tmp_path / 'x')), 2,
                    'names one image by ref=', 'can name many')
    assert not (tmp_path / 'x').exists()


def test_two_images_of_one_run_under_one_ref_fail_the_second(tmp_path):
    """A docker save tarball of a:v1, b:v1 and c:v2: a and b both want ref v1, so b fails alone and the run exits 1
    with a and c stored."""
    tars = [layer_tar({'n': b'%d\n' % number}) for number in range(3)]
    archive = write_tar(tmp_path / 'three.tar', legacy_members([(['a:v1'], tars[:1]), (['b:v1'], tars[1:2]),
                                                                (['c:v2'], tars[2:])]))
    out = tmp_path / 'out'
    result = occystrap('-J', '1', '-O', 'json', 'process', 'tar://%s' % archive, 'ocidir://%s' % out)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [(r['image'], r['ok']) for r in report['results']] == [('a:v1', True), ('b:v1', False), ('c:v2', True)]
    assert "ref 'v1' of ocidir://%s is taken by a:v1 in this run" % out in report['results'][1]['error']
    assert refs_of(out) == ['v1', 'v2']
    config = json.loads(skopeo_inspect('oci:%s:v1' % out, config=True, raw=True, parse=False))
    assert config['rootfs']['diff_ids'] == [sha256(tars[0])]


# --- a failed run ---------------------------------------------------------------------------------------------------

def _corrupt_a_layer(built):
    blob = built.path / 'blobs' / 'sha256' / built.layer_digests[1].split(':')[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xff
    blob.write_bytes(bytes(data))


def test_a_failed_run_names_nothing_new_and_leaves_no_partial_blob(image, tmp_path):
    out = tmp_path / 'out'
    ok('process', 'ocidir://%s' % image.path, 'ocidir://%s?ref=good' % out)
    before = tree_digests(out)
    bad = build_oci_layout(tmp_path / 'bad', [{'a': b'a\n'}, {'b': os.urandom(50000)}], tag='bad')
    _corrupt_a_layer(bad)
    result = occystrap('process', 'ocidir://%s' % bad.path, 'ocidir://%s' % out)
    assert_one_line(result, 1, 'digest mismatch')
    after = tree_digests(out)
    assert after['index.json'] == before['index.json']
    added = set(after) - set(before)
    # only complete, content-addressed blobs may stay (the intact layer); nothing half written, no staging left
    assert all(name.startswith('blobs/sha256/') and name.split('/')[-1] == after[name] for name in added), added
    assert sorted(os.listdir(out)) == ['blobs', 'index.json', 'oci-layout']

    # into a layout that did not exist: nothing at all is left
    result = occystrap('process', 'ocidir://%s' % bad.path, 'ocidir://%s' % (tmp_path / 'new'))
    assert_one_line(result, 1, 'digest mismatch')
    assert not (tmp_path / 'new').exists()
    # into an empty directory that was there: it stays, empty again
    (tmp_path / 'empty').mkdir()
    result = occystrap('process', 'ocidir://%s' % bad.path, 'ocidir://%s' % (tmp_path / 'empty'))
    assert_one_line(result, 1, 'digest mismatch')
    assert os.listdir(tmp_path / 'empty') == []


def test_destinations_that_are_not_layouts_are_refused(image, tmp_path):
    busy = tmp_path / 'busy'
    busy.mkdir()
    (busy / 'notes.txt').write_text('mine')
    assert_one_line(occystrap('process', 'ocidir://%s' % image.path, 'ocidir://%s' % busy), 1,
                    'is not empty and not an OCI image layout')
    assert os.listdir(busy) == ['notes.txt']
    afile = tmp_path / 'file'
    afile.write_text('x')
    assert_one_line(occystrap('process', 'ocidir://%s' % image.path, 'ocidir://%s' % afile), 1,
                    'exists and is not a directory')
    broken = tmp_path / 'broken'
    build_oci_layout(broken, LAYERS)
    (broken / 'index.json').write_bytes(b'[' * 100000)
    assert_one_line(occystrap('process', 'ocidir://%s' % image.path, 'ocidir://%s' % broken), 1,
                    'nested too deeply')
    empty = tmp_path / 'empty'
    empty.mkdir()
    ok('process', 'ocidir://%s' % image.path, 'ocidir://%s' % empty)
    assert refs_of(empty) == ['v1']


# --- hostile layouts as a source --------------------------------------------------------------------------------

def _rewrite_index(built, change):
    index = json.loads((built.path / 'index.json').read_bytes())
    change(index)
    (built.path / 'index.json').write_text(json.dumps(index))


def _nested(built, depth):
    """index.json -> `depth` indexes, one inside the other, -> the manifest."""
    blobs = built.path / 'blobs' / 'sha256'
    descriptor = {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': built.manifest_digest,
                  'size': len((blobs / built.manifest_digest.split(':')[1]).read_bytes()),
                  'platform': {'os': 'linux', 'architecture': 'amd64'}}
    for _ in range(depth):
        data = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
                           'manifests': [descriptor]}).encode()
        (blobs / sha256(data).split(':')[1]).write_bytes(data)
        descriptor = {'mediaType': 'application/vnd.oci.image.index.v1+json', 'digest': sha256(data),
                      'size': len(data), 'platform': {'os': 'linux', 'architecture': 'amd64'}}
    return descriptor


def hostile_bad_digest(built, tmp_path):
    _rewrite_index(built, lambda index: index['manifests'][0].update(digest='sha256:../../../../etc/passwd'))
    return 'has a malformed digest'


def hostile_dotdot_ref(built, tmp_path):
    _rewrite_index(built, lambda index: index['manifests'][0]['annotations'].update(
        {'org.opencontainers.image.ref.name': '../../etc/x:v1'}))
    return 'names an invalid repository'


def hostile_control_ref(built, tmp_path):
    _rewrite_index(built, lambda index: index['manifests'][0]['annotations'].update(
        {'org.opencontainers.image.ref.name': 'v1\x1b]0;pwned\x07$(touch /tmp/%s)' % MARKER}))
    return 'names an invalid'


def hostile_deep_json(built, tmp_path):
    (built.path / 'index.json').write_bytes(b'{"manifests": ' + b'[' * 100000)
    return 'nested too deeply'


def hostile_deep_indexes(built, tmp_path):
    top = _nested(built, 6)
    _rewrite_index(built, lambda index: index.update(manifests=[dict(top, annotations={
        'org.opencontainers.image.ref.name': 'v1'})]))
    return 'nests indexes more than 4 deep'


def hostile_missing_blob(built, tmp_path):
    (built.path / 'blobs' / 'sha256' / built.layer_digests[0].split(':')[1]).unlink()
    return 'has no file blobs/sha256/%s' % built.layer_digests[0].split(':')[1]


def hostile_missing_manifest(built, tmp_path):
    (built.path / 'blobs' / 'sha256' / built.manifest_digest.split(':')[1]).unlink()
    return 'has no file blobs/sha256/%s' % built.manifest_digest.split(':')[1]


def hostile_bytes_mismatch(built, tmp_path):
    _corrupt_a_layer(built)
    return 'digest mismatch for blob %s' % built.layer_digests[1]


def hostile_manifest_mismatch(built, tmp_path):
    path = built.path / 'blobs' / 'sha256' / built.manifest_digest.split(':')[1]
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion":3'))
    return 'does not match its digest'


def hostile_size_lie(built, tmp_path):
    path = built.path / 'blobs' / 'sha256' / built.layer_digests[0].split(':')[1]
    path.write_bytes(path.read_bytes() + b'tail')
    return 'is %d bytes but' % path.stat().st_size


def hostile_symlinked_blob(built, tmp_path):
    secret = tmp_path / 'secret'
    secret.write_text('host file\n')
    path = built.path / 'blobs' / 'sha256' / built.config_digest.split(':')[1]
    path.unlink()
    path.symlink_to(secret)
    return 'is not a regular file'


def hostile_fifo_blob(built, tmp_path):
    path = built.path / 'blobs' / 'sha256' / built.layer_digests[0].split(':')[1]
    path.unlink()
    os.mkfifo(path)
    return 'is not a regular file'


def hostile_symlinked_blobs_directory(built, tmp_path):
    os.rename(built.path / 'blobs', tmp_path / 'elsewhere')
    os.symlink(tmp_path / 'elsewhere', built.path / 'blobs')
    return 'has blobs where a directory should be'


HOSTILE = [hostile_bad_digest, hostile_dotdot_ref, hostile_control_ref, hostile_deep_json, hostile_deep_indexes,
           hostile_missing_blob, hostile_missing_manifest, hostile_bytes_mismatch, hostile_manifest_mismatch,
           hostile_size_lie, hostile_symlinked_blob, hostile_fifo_blob, hostile_symlinked_blobs_directory]


@pytest.mark.parametrize('make_hostile', HOSTILE, ids=[f.__name__[len('hostile_'):] for f in HOSTILE])
def test_hostile_layouts_are_one_line_and_write_nothing(tmp_path, make_hostile):
    built = build_oci_layout(tmp_path / 'layout', [{'a': b'a\n'}, {'b': os.urandom(20000)}], tag='v1')
    fragment = make_hostile(built, tmp_path)
    for destination in ('ocidir', 'tar'):
        out = tmp_path / ('out-' + destination)
        result = occystrap('process', 'ocidir://%s' % built.path, '%s://%s' % (destination, out))
        assert_one_line(result, 1, fragment)
        assert not out.exists() or os.listdir(out) == [], destination
    assert not os.path.exists('/tmp/' + MARKER)


# --- in: layouts other tools wrote ------------------------------------------------------------------------------

def _umoci(*args):
    result = subprocess.run(['umoci', *args], capture_output=True, text=True)
    assert result.returncode == 0, 'umoci %s failed: %s' % (' '.join(args), result.stderr)


@pytest.mark.integration
def test_a_layout_umoci_built_reads_and_copies_with_its_digest(tmp_path):
    layout = tmp_path / 'umoci'
    _umoci('init', '--layout', str(layout))
    _umoci('new', '--image', '%s:made' % layout)
    _umoci('unpack', '--rootless', '--image', '%s:made' % layout, str(tmp_path / 'bundle'))
    (tmp_path / 'bundle' / 'rootfs' / 'hello').write_text('written through umoci\n')
    _umoci('repack', '--image', '%s:made' % layout, str(tmp_path / 'bundle'))
    made = skopeo_inspect('oci:%s:made' % layout, raw=True, parse=False)
    report = json.loads(ok('-O', 'json', 'info', 'ocidir://%s?ref=made' % layout).stdout)
    assert report[0]['manifest_digest'] == sha256(made)
    out = tmp_path / 'out'
    ok('process', 'ocidir://%s?ref=made' % layout, 'ocidir://%s' % out)
    assert skopeo_inspect('oci:%s:made' % out, raw=True, parse=False) == made
    rootfs = umoci_unpack(out, 'made', tmp_path / 'again')
    assert (rootfs / 'hello').read_text() == 'written through umoci\n'


@pytest.mark.integration
def test_every_image_of_a_layout_skopeo_wrote_goes_to_a_registry(registry, repo_name, image, tmp_path):
    other = build_oci_layout(tmp_path / 'other', [{'other': b'other\n'}], tag='v2')
    layout = tmp_path / 'skopeo'
    skopeo_copy('oci:%s:v1' % image.path, 'oci:%s:one' % layout)
    skopeo_copy('oci:%s:v2' % other.path, 'oci:%s:two' % layout)
    result = ok('--insecure', '-O', 'json', 'process', 'ocidir://%s' % layout,
                'registry://%s/%s' % (registry.host, repo_name))
    assert [r['image'] for r in json.loads(result.stdout)['results']] == ['skopeo:one', 'skopeo:two']
    for tag, built in (('one', image), ('two', other)):
        served = skopeo_inspect('docker://%s/%s/skopeo:%s' % (registry.host, repo_name, tag), raw=True, parse=False)
        assert sha256(served) == built.manifest_digest
