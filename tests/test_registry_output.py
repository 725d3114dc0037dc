"""registry:// output against a real docker-registry: pushes that skopeo accepts, mounts, zstd, failures, layer cache.

Source images are seeded with skopeo (not our code) and what we push is checked with skopeo and the registry's own
access log.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from occystrap import pipeline, uris
from occystrap.settings import Settings
from tests.services import (Registry, ServiceError, build_oci_layout, layer_tar, seed_image, skopeo, skopeo_copy,
                            skopeo_inspect)

pytestmark = pytest.mark.integration

DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
DOCKER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip'
OCI_ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd'


def occystrap(*args, check=True):
    result = subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=240)
    if check and result.returncode != 0:
        raise AssertionError('occystrap %s failed (%d):\n%s' % (' '.join(args), result.returncode, result.stderr))
    return result


def totals(result):
    """The run's blob counts from the -O json summary: uploaded, mounted, present, compressed, cached."""
    push = json.loads(result.stdout)['push']
    return {'uploaded': push['uploaded'], 'mounted': push['mounted'], 'present': push['present'],
            'compressed': push['compressed'], 'cached': push['cache_hits']}


def uploads_to(registry, repository):
    """Blob upload requests (POST without mount, PATCH, PUT) the registry served for a repository."""
    prefix = '/v2/%s/blobs/uploads/' % repository
    return [e for e in registry.access_log() if e.path.startswith(prefix)
            and not (e.method == 'POST' and 'mount=' in e.path and e.status == 201)]


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def small_image(path, seed=0):
    return build_oci_layout(path, layers=[
        {'etc': {'type': 'dir'}, 'etc/hello.txt': b'hello %d\n' % seed},
        {'usr/bin/tool': {'type': 'file', 'data': b'#!/bin/sh\necho %d\n' % seed, 'mode': 0o755},
         'usr/share/data.bin': random.Random(seed).randbytes(200_000)},
    ])


def docker_archive(tmp_path, image, name='example/app:v1'):
    """A `docker save` style tarball of an OCI layout, written by skopeo (layers uncompressed)."""
    path = tmp_path / ('%s.tar' % name.replace('/', '_').replace(':', '_'))
    skopeo_copy('oci:%s:latest' % image.path, 'docker-archive:%s:%s' % (path, name))
    return path


def oci_archive(tmp_path, image):
    """An OCI image layout packed into a tarball (layers as the layout has them)."""
    path = tmp_path / 'oci-layout.tar'
    with tarfile.open(path, 'w') as tar:
        for file in sorted(Path(image.path).rglob('*')):
            if file.is_file():
                tar.add(file, arcname=str(file.relative_to(image.path)))
    return path


def export_oci(tmp_path, ref):
    """skopeo copy docker://REF oci:DIR; returns (manifest, {digest: blob bytes}) as skopeo stored them."""
    out = tmp_path / ('export-%d' % time.monotonic_ns())
    skopeo_copy('docker://' + ref, 'oci:%s:x' % out)
    index = json.loads((out / 'index.json').read_text())
    manifest_digest = index['manifests'][0]['digest']

    def blob(digest):
        return (out / 'blobs' / 'sha256' / digest.split(':', 1)[1]).read_bytes()

    return json.loads(blob(manifest_digest)), blob


# --- registry to registry ------------------------------------------------------------------------------------------

def test_same_registry_copy_mounts_every_blob_and_keeps_digests(registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img')
    seed_image(registry, repo_name + '-src', 'v1', image.path)
    dest = repo_name + '-dst'
    result = occystrap('-O', 'json', 'process', 'registry://%s/%s-src:v1?insecure=true' % (registry.host, repo_name),
                       'registry://%s/%s:v2?insecure=true' % (registry.host, dest))
    counts = totals(result)
    assert counts['mounted'] == 3 and counts['uploaded'] == 0 and counts['compressed'] == 0, result.stderr
    assert uploads_to(registry, dest) == [], 'blobs were uploaded instead of mounted'
    mounts = [e for e in registry.access_log() if e.path.startswith('/v2/%s/blobs/uploads/?mount=' % dest)]
    assert len(mounts) == 3 and all(e.status == 201 for e in mounts)

    pushed = skopeo_inspect('docker://%s/%s:v2' % (registry.host, dest))
    assert pushed['Layers'] == image.layer_digests
    manifest, blob = export_oci(tmp_path, '%s/%s:v2' % (registry.host, dest))
    assert manifest['config']['digest'] == image.config_digest
    assert [layer['digest'] for layer in manifest['layers']] == image.layer_digests
    # skopeo verified every blob against its digest while copying; the layers still hold the source's files.
    assert gzip.decompress(blob(image.layer_digests[0])) and sha256(gzip.decompress(blob(image.layer_digests[1]))) \
        == image.diff_ids[1]


def test_copy_to_another_registry_uploads_everything(registry, fresh_registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=1)
    seeded = seed_image(registry, repo_name, 'v1', image.path, '--format', 'v2s2')
    result = occystrap('-O', 'json', 'process', 'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name),
                       'registry://%s/copy/app?insecure=true' % fresh_registry.host)
    counts = totals(result)
    assert (counts['uploaded'], counts['mounted'], counts['compressed']) == (3, 0, 0), result.stderr
    raw = skopeo_inspect('docker://%s/copy/app:latest' % fresh_registry.host, raw=True)
    # The source was a Docker schema 2 image: so is the copy, with the same blobs.
    assert raw['mediaType'] == DOCKER_MANIFEST
    assert [layer['mediaType'] for layer in raw['layers']] == [DOCKER_GZIP, DOCKER_GZIP]
    assert [layer['digest'] for layer in raw['layers']] == image.layer_digests
    assert raw['config']['digest'] == image.config_digest
    # We write schema 2 manifests field for field as skopeo does, so even the manifest digest survives the copy.
    assert skopeo_inspect('docker://%s/copy/app:latest' % fresh_registry.host)['Digest'] == seeded
    export_oci(tmp_path, '%s/copy/app:latest' % fresh_registry.host)
    # A second push of the same image finds it in place: the destination tag already holds its digest.
    again = occystrap('-O', 'json', 'process', 'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name),
                      'registry://%s/copy/app?insecure=true' % fresh_registry.host)
    assert totals(again)['uploaded'] == 0 and json.loads(again.stdout)['push']['manifests'] == 0
    assert json.loads(again.stdout)['results'][0]['state'] == 'unchanged'


def test_unchanged_image_keeps_its_manifest_digest_when_the_source_bytes_are_known(registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=10)
    seeded = seed_image(registry, repo_name + '-src', 'v1', image.path)
    source_bytes = skopeo_inspect('docker://%s/%s-src:v1' % (registry.host, repo_name), raw=True, parse=False)
    assert sha256(source_bytes) == seeded
    ctx = pipeline.RunContext(Settings(insecure=True))
    try:
        source = pipeline.build_input(uris.parse_uri('registry://%s/%s-src:v1' % (registry.host, repo_name),
                                                     'input'), ctx)
        opened = source.open(source.references()[0])
        if opened.manifest_bytes is None:   # the input may not keep them; what it would keep is these bytes
            opened = dataclasses.replace(opened, manifest_bytes=source_bytes)
        output = pipeline.build_output(uris.parse_uri('registry://%s/%s:v1' % (registry.host, repo_name), 'output'),
                                       ctx)
        assert output.write(opened) == seeded
        # A changed image cannot keep them: replace() drops the bytes with the digest.
        changed = opened.replace(config=dict(opened.config, author='someone else'))
        assert changed.manifest_bytes is None
        assert output.write(changed) != seeded
        output.finalize()
    finally:
        ctx.close()
    # The destination holds the source's exact manifest; the tag now names the changed image.
    assert skopeo_inspect('docker://%s/%s@%s' % (registry.host, repo_name, seeded), raw=True,
                          parse=False) == source_bytes
    assert skopeo_inspect('docker://%s/%s:v1' % (registry.host, repo_name))['Digest'] != seeded


def test_push_to_tls_registry_with_basic_auth(basic_auth_registry, registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=2)
    seed_image(registry, repo_name, 'v1', image.path)
    reg = basic_auth_registry
    source = 'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name)
    occystrap('--ca-cert', str(reg.ca_path), 'process', source,
              'registry://%s:%s@%s/%s:v1' % (reg.username, reg.password, reg.host, repo_name))
    assert skopeo_inspect('docker://%s/%s:v1' % (reg.host, repo_name))['Layers'] == image.layer_digests
    denied = occystrap('--ca-cert', str(reg.ca_path), 'process',
                       'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name),
                       'registry://%s/%s:nocreds' % (reg.host, repo_name), check=False)
    assert denied.returncode == 1 and 'credentials' in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1, denied.stderr


def test_mount_refused_for_lack_of_pull_access_falls_back_to_upload(tmp_path):
    def permissions(user, resource_type, name, actions):
        if user == 'testuser' or (user == 'pusher' and name.startswith('mirror/')):
            return actions
        return []

    users = {'testuser': 'testpassword', 'pusher': 'pusherpassword'}
    with Registry(tmp_path / 'registry', auth='token', users=users, permissions=permissions) as reg:
        image = small_image(tmp_path / 'img', seed=11)
        seed_image(reg, 'src/app', 'v1', image.path)
        # --verbose: the fallback is logged at info level.
        result = occystrap('-O', 'json', '--verbose', 'process',
                           'registry://testuser:testpassword@%s/src/app:v1?insecure=true' % reg.host,
                           'registry://pusher:pusherpassword@%s/mirror/app:v1?insecure=true' % reg.host)
        counts = totals(result)
        assert (counts['mounted'], counts['uploaded']) == (0, 3), result.stderr
        assert 'uploading instead' in result.stderr
        assert skopeo_inspect('docker://%s/mirror/app:v1' % reg.host)['Layers'] == image.layer_digests


# --- from tarballs -------------------------------------------------------------------------------------------------

def test_push_docker_save_tarball_compresses_layers(registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=3)
    archive = docker_archive(tmp_path, image)
    occystrap('process', 'tar://%s' % archive, 'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name))
    raw = skopeo_inspect('docker://%s/%s:v1' % (registry.host, repo_name), raw=True)
    assert raw['mediaType'] == DOCKER_MANIFEST
    assert [layer['mediaType'] for layer in raw['layers']] == [DOCKER_GZIP, DOCKER_GZIP]
    config = skopeo_inspect('docker://%s/%s:v1' % (registry.host, repo_name), config=True)
    assert config['rootfs']['diff_ids'] == image.diff_ids
    manifest, blob = export_oci(tmp_path, '%s/%s:v1' % (registry.host, repo_name))
    for layer, diffid in zip(manifest['layers'], image.diff_ids):
        data = blob(layer['digest'])
        assert data[:2] == b'\x1f\x8b' and sha256(gzip.decompress(data)) == diffid
    # Compression is deterministic: the same tarball pushed elsewhere gives the same layer digests.
    occystrap('process', 'tar://%s' % archive, 'registry://%s/%s-again:v1?insecure=true' % (registry.host, repo_name))
    again = skopeo_inspect('docker://%s/%s-again:v1' % (registry.host, repo_name), raw=True)
    assert [layer['digest'] for layer in again['layers']] == [layer['digest'] for layer in raw['layers']]


def test_zstd_push_writes_an_oci_manifest_with_zstd_layers(registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=4)
    seed_image(registry, repo_name + '-src', 'v1', image.path, '--format', 'v2s2')
    occystrap('--compression', 'zstd', 'process',
              'registry://%s/%s-src:v1?insecure=true' % (registry.host, repo_name),
              'registry://%s/%s:zstd?insecure=true' % (registry.host, repo_name))
    raw = skopeo_inspect('docker://%s/%s:zstd' % (registry.host, repo_name), raw=True)
    assert raw['mediaType'] == OCI_MANIFEST
    assert raw['config']['mediaType'] == 'application/vnd.oci.image.config.v1+json'
    assert [layer['mediaType'] for layer in raw['layers']] == [OCI_ZSTD, OCI_ZSTD]
    assert skopeo_inspect('docker://%s/%s:zstd' % (registry.host, repo_name))['Layers'] == \
        [layer['digest'] for layer in raw['layers']]
    manifest, blob = export_oci(tmp_path, '%s/%s:zstd' % (registry.host, repo_name))
    for layer, diffid in zip(manifest['layers'], image.diff_ids):
        data = blob(layer['digest'])
        assert data[:4] == b'\x28\xb5\x2f\xfd'
        unpacked = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
        assert sha256(unpacked) == diffid
    # skopeo itself can decompress what we pushed: the layers it writes out are the source's diffids.
    out = tmp_path / 'decompressed'
    skopeo_copy('docker://%s/%s:zstd' % (registry.host, repo_name), 'dir:%s' % out, '--dest-decompress')
    stored = json.loads((out / 'manifest.json').read_text())
    assert [sha256((out / layer['digest'].split(':')[1]).read_bytes()) for layer in stored['layers']] == \
        image.diff_ids


def test_multi_image_tarball_pushes_under_a_prefix(registry, repo_name, tmp_path):
    base = layer_tar({'etc/os-release': b'ID=shared\n'})
    apps = {'org/app:v1': layer_tar({'app': b'app\n'}), 'org/tool:v2': layer_tar({'tool': b'tool\n'})}
    archive = tmp_path / 'multi.tar'
    entries = []
    with tarfile.open(archive, 'w') as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add('base/layer.tar', base)
        for number, (tag, top) in enumerate(apps.items()):
            config = json.dumps({'architecture': 'amd64', 'os': 'linux', 'config': {},
                                 'rootfs': {'type': 'layers', 'diff_ids': [sha256(base), sha256(top)]}}).encode()
            config_name = '%s.json' % sha256(config).split(':')[1]
            add(config_name, config)
            add('top%d/layer.tar' % number, top)
            entries.append({'Config': config_name, 'RepoTags': [tag],
                            'Layers': ['base/layer.tar', 'top%d/layer.tar' % number]})
        add('manifest.json', json.dumps(entries).encode())
    result = occystrap('-O', 'json', 'process', 'tar://%s' % archive,
                       'registry://%s/%s?insecure=true' % (registry.host, repo_name))
    for source, dest in (('org/app:v1', 'app:v1'), ('org/tool:v2', 'tool:v2')):
        config = skopeo_inspect('docker://%s/%s/%s' % (registry.host, repo_name, dest), config=True)
        assert config['rootfs']['diff_ids'] == [sha256(base), sha256(apps[source])]
    counts = totals(result)
    # The shared base layer is compressed once and reaches the second repository by mount or upload, not twice
    # compressed: 3 distinct layers.
    assert counts['compressed'] == 3, result.stderr
    with pytest.raises(ServiceError):
        skopeo_inspect('docker://%s/%s:latest' % (registry.host, repo_name))


def test_push_by_digest_must_match(registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=5)
    archive = oci_archive(tmp_path, image)
    wrong = 'sha256:' + '0' * 64
    result = occystrap('process', 'tar://%s' % archive,
                       'registry://%s/%s@%s?insecure=true' % (registry.host, repo_name, wrong), check=False)
    assert result.returncode == 1 and wrong in result.stderr
    with pytest.raises(ServiceError):
        skopeo_inspect('docker://%s/%s@%s' % (registry.host, repo_name, wrong))


# --- failures ------------------------------------------------------------------------------------------------------

def _corrupt_member(archive, predicate):
    """Flip one byte in the middle of the first tar member matching predicate (same size, so still a tarball)."""
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.isfile() and predicate(m))
    with open(archive, 'r+b') as f:
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xff]))
    return member.name


def test_corrupt_blob_streamed_as_is_leaves_no_tag(registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=6)
    archive = oci_archive(tmp_path, image)
    bad = image.layer_digests[1].split(':')[1]
    _corrupt_member(archive, lambda m: m.name.endswith(bad))
    result = occystrap('process', 'tar://%s' % archive, 'registry://%s/%s:v1?insecure=true' % (registry.host,
                                                                                               repo_name), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith('error: ') and 'Traceback' not in result.stderr
    assert image.layer_digests[1] in result.stderr, result.stderr
    with pytest.raises(ServiceError):
        skopeo_inspect('docker://%s/%s:v1' % (registry.host, repo_name))
    assert not [e for e in registry.access_log() if e.path.startswith('/v2/%s/manifests/' % repo_name)
                and e.method == 'PUT']


def test_corrupt_layer_that_needs_compressing_leaves_no_tag(registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=7)
    archive = docker_archive(tmp_path, image)
    bad = image.diff_ids[1].split(':')[1]
    _corrupt_member(archive, lambda m: bad in m.name)
    result = occystrap('process', 'tar://%s' % archive, 'registry://%s/%s:v1?insecure=true' % (registry.host,
                                                                                               repo_name), check=False)
    assert result.returncode == 1 and 'digest mismatch' in result.stderr, result.stderr
    with pytest.raises(ServiceError):
        skopeo_inspect('docker://%s/%s:v1' % (registry.host, repo_name))


# --- layer cache ---------------------------------------------------------------------------------------------------

def _push_in_process(source, dest, **settings):
    """Run a push in this process (no interpreter start-up in the timing); returns seconds taken."""
    ctx = pipeline.RunContext(Settings(**settings))
    started = time.monotonic()
    try:
        results = pipeline.run_process(uris.parse_uri(source, 'input'), uris.parse_uri(dest, 'output'), [], ctx)
    finally:
        ctx.close()
    assert all(r.ok for r in results)
    return time.monotonic() - started


def _upload_posts(registry):
    return [e for e in registry.access_log() if e.method == 'POST' and e.path.endswith('/blobs/uploads/')]


def test_layer_cache_makes_a_second_push_of_uncompressed_layers_cheap(fresh_registry, tmp_path):
    # How much faster the cached push is gets measured by tools/layercache_bench.sh; here: that it does no work.
    rng = random.Random(42)
    words = [bytes(rng.choice(b'abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 9))) for _ in range(500)]
    layers = []
    for number in range(3):
        text = b' '.join(rng.choice(words) for _ in range(20_000)) * 4
        layers.append({'data/text%d' % number: text, 'data/noise%d' % number: rng.randbytes(1_000_000)})
    image = build_oci_layout(tmp_path / 'big', layers=layers, compression=None)
    archive = docker_archive(tmp_path, image, 'big/app:v1')
    cache = tmp_path / 'cache' / 'layers.json'
    source = 'tar://%s' % archive
    dest = 'registry://%s/big/app:v1?insecure=true' % fresh_registry.host

    _push_in_process(source, dest, layer_cache=str(cache))
    posts_after_first = len(_upload_posts(fresh_registry))
    assert posts_after_first == 4    # three layers and the config
    entries = json.loads(cache.read_text())['entries']
    assert len(entries) == 3
    digest_first = skopeo_inspect('docker://%s/big/app:v1' % fresh_registry.host, raw=True)

    args = ['-O', 'json', '--layer-cache', str(cache), 'process', source, dest]
    second = totals(occystrap(*args))
    assert (second['compressed'], second['cached'], second['uploaded']) == (0, 3, 0)
    assert len(_upload_posts(fresh_registry)) == posts_after_first, 'the second push uploaded something'
    assert skopeo_inspect('docker://%s/big/app:v1' % fresh_registry.host, raw=True) == digest_first


def test_layer_cache_with_filters_and_a_second_registry(fresh_registry, registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=8)
    seed_image(registry, repo_name, 'v1', image.path)
    cache = tmp_path / 'layers.json'
    source = 'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name)
    dest = 'registry://%s/%s:norm?insecure=true' % (registry.host, repo_name)
    args = ['-O', 'json', '--layer-cache', str(cache), 'process', source]
    first = totals(occystrap(*args, dest, '-f', 'normalize-timestamps'))
    assert first['compressed'] == 2 and first['cached'] == 0
    pushed = skopeo_inspect('docker://%s/%s:norm' % (registry.host, repo_name), raw=True)
    second = totals(occystrap(*args, dest, '-f', 'normalize-timestamps'))
    assert (second['compressed'], second['cached'], second['uploaded']) == (0, 2, 0)
    assert skopeo_inspect('docker://%s/%s:norm' % (registry.host, repo_name), raw=True) == pushed
    # Another repository of the same registry: the cached blobs are mounted from where they were pushed.
    other = totals(occystrap(*args, 'registry://%s/%s-other:norm?insecure=true' % (registry.host, repo_name),
                             '-f', 'normalize-timestamps'))
    # Only the rewritten config (no source repository holds it) is uploaded.
    assert (other['compressed'], other['cached'], other['mounted'], other['uploaded']) == (0, 2, 2, 1)
    # Other filters are another key: compressed again.
    ts = totals(occystrap(*args, dest.replace(':norm', ':ts9'), '-f', 'normalize-timestamps:ts=9'))
    assert ts['compressed'] == 2 and ts['cached'] == 0
    # A registry that never saw the blobs: the entry does not apply there, the layers are compressed and uploaded.
    elsewhere = totals(occystrap(*args, 'registry://%s/x/y:norm?insecure=true' % fresh_registry.host,
                                 '-f', 'normalize-timestamps'))
    assert elsewhere['compressed'] == 2 and elsewhere['uploaded'] == 3
    assert skopeo_inspect('docker://%s/x/y:norm' % fresh_registry.host, raw=True)['layers'] == pushed['layers']


def test_broken_layer_cache_file_is_a_warning_not_a_failure(registry, repo_name, tmp_path):
    image = small_image(tmp_path / 'img', seed=9)
    archive = docker_archive(tmp_path, image)
    cache = tmp_path / 'layers.json'
    cache.write_text('{broken')
    result = occystrap('--layer-cache', str(cache), 'process', 'tar://%s' % archive,
                       'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name))
    assert 'ignoring layer cache' in result.stderr
    assert len(json.loads(cache.read_text())['entries']) == 2
    skopeo('inspect', '--tls-verify=false', '--no-creds', 'docker://%s/%s:v1' % (registry.host, repo_name))
