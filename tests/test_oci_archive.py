"""tar://?format=oci (skopeo's oci-archive:) and the name written into docker archives (RepoTags, ?ref=).

Checked with skopeo inspect oci-archive: / docker-archive:, digests recomputed from the bytes of the members."""

import hashlib
import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.helpers import sha256
from tests.services import build_oci_layout, seed_image, skopeo_copy, skopeo_inspect

LAYERS = [{'etc': {'type': 'dir'}, 'etc/hello.txt': b'hello from an oci-archive test\n'},
          {'opt/data': os.urandom(30000)}]


def occystrap(*args):
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith('_proxy')}
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL, env=env)


def ok(*args):
    result = occystrap(*args)
    assert result.returncode == 0, result.stderr
    return result


def members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture
def image(tmp_path):
    return build_oci_layout(tmp_path / 'src', LAYERS, tag='v1')


@pytest.mark.integration
def test_registry_to_oci_archive_keeps_the_digests(registry, repo_name, image, tmp_path):
    pushed = seed_image(registry, repo_name, 'v1', image.path)
    archive = tmp_path / 'image.tar'
    ok('--insecure', 'process', 'registry://%s/%s:v1' % (registry.host, repo_name), 'tar://%s?format=oci' % archive)
    found = members(archive)
    # an OCI layout, nothing of docker-archive: blobs named by the hash of their own bytes, compressed as they came
    assert {'index.json', 'oci-layout'} <= set(found) and 'manifest.json' not in found
    for name, data in found.items():
        if name.startswith('blobs/sha256/'):
            assert hashlib.sha256(data).hexdigest() == name.split('/')[-1]
    assert {'blobs/sha256/' + d.split(':')[1] for d in image.layer_digests} <= set(found)
    index = json.loads(found['index.json'])
    assert [m['annotations'] for m in index['manifests']] == [{'org.opencontainers.image.ref.name': 'v1'}]
    raw = skopeo_inspect('oci-archive:%s:v1' % archive, raw=True, parse=False)
    assert sha256(raw) == pushed == image.manifest_digest
    assert skopeo_inspect('oci-archive:%s:v1' % archive)['Layers'] == image.layer_digests

    # a round trip through the archive keeps the digest: tar:// reads it back and pushes the same manifest
    ok('--insecure', 'process', 'tar://%s' % archive, 'registry://%s/%s:again' % (registry.host, repo_name))
    again = skopeo_inspect('docker://%s/%s:again' % (registry.host, repo_name), raw=True, parse=False)
    assert sha256(again) == pushed


@pytest.mark.integration
def test_an_oci_archive_written_by_skopeo_reads_back(image, tmp_path):
    archive = tmp_path / 'skopeo.tar'
    skopeo_copy('oci:%s:v1' % image.path, 'oci-archive:%s:v1' % archive)
    out = tmp_path / 'out'
    ok('process', 'tar://%s' % archive, 'ocidir://%s' % out)
    assert sha256(skopeo_inspect('oci:%s:v1' % out, raw=True, parse=False)) == image.manifest_digest
    ours = tmp_path / 'ours.tar'
    ok('process', 'tar://%s' % archive, 'tar://%s?format=oci&ref=again' % ours)
    assert sha256(skopeo_inspect('oci-archive:%s:again' % ours, raw=True, parse=False)) == image.manifest_digest
    # the same images give the same archive, byte for byte
    twice = tmp_path / 'twice.tar'
    ok('process', 'tar://%s' % archive, 'tar://%s?format=oci&ref=again' % twice)
    assert ours.read_bytes() == twice.read_bytes()


def test_a_filtered_image_goes_into_an_oci_archive_uncompressed(image, tmp_path):
    archive = tmp_path / 'filtered.tar'
    ok('process', 'ocidir://%s' % image.path, 'tar://%s?format=oci' % archive, '-f', 'normalize-timestamps')
    found = members(archive)
    index = json.loads(found['index.json'])
    manifest = json.loads(found['blobs/sha256/' + index['manifests'][0]['digest'].split(':')[1]])
    config = json.loads(found['blobs/sha256/' + manifest['config']['digest'].split(':')[1]])
    assert [d['digest'] for d in manifest['layers']] == config['rootfs']['diff_ids']
    for descriptor in manifest['layers']:
        assert sha256(found['blobs/sha256/' + descriptor['digest'].split(':')[1]]) == descriptor['digest']
    out = tmp_path / 'out'
    ok('process', 'tar://%s' % archive, 'ocidir://%s' % out)
    assert sha256(skopeo_inspect('oci:%s:v1' % out, raw=True, parse=False)) == index['manifests'][0]['digest']


@pytest.mark.integration
def test_docker_archive_names_keep_the_registry_host_or_follow_ref(registry, repo_name, image, tmp_path):
    seed_image(registry, repo_name, 'v1', image.path)
    source = 'registry://%s/%s:v1' % (registry.host, repo_name)
    plain = tmp_path / 'plain.tar'
    ok('--insecure', 'process', source, 'tar://%s' % plain)
    found = members(plain)
    qualified = '%s/%s' % (registry.host, repo_name)
    assert json.loads(found['manifest.json'])[0]['RepoTags'] == [qualified + ':v1']
    assert list(json.loads(found['repositories'])) == [qualified]
    annotations = json.loads(found['index.json'])['manifests'][0]['annotations']
    assert annotations == {'io.containerd.image.name': qualified + ':v1', 'org.opencontainers.image.ref.name': 'v1'}
    # skopeo finds the image by that name in the docker-archive (as docker load would tag it)
    assert skopeo_inspect('docker-archive:%s:%s:v1' % (plain, qualified))['Layers'] == image.diff_ids

    named = tmp_path / 'named.tar'
    ok('--insecure', 'process', source, 'tar://%s?ref=mirror.example:5000/team/app:2.0' % named)
    assert json.loads(members(named)['manifest.json'])[0]['RepoTags'] == ['mirror.example:5000/team/app:2.0']
    assert skopeo_inspect('docker-archive:%s:mirror.example:5000/team/app:2.0' % named)['Layers'] == image.diff_ids


def test_format_and_ref_options_are_checked(image, tmp_path):
    archive = tmp_path / 'x.tar'
    for uri, fragment in (('tar://%s?format=zip' % archive, "bad format 'zip'"),
                          ('tar://%s?ref=UPPER/Case:v1' % archive, "bad ref 'UPPER/Case:v1'"),
                          ('tar://%s?ref=a:b:c' % archive, "bad ref 'a:b:c'"),
                          ('tar://%s?colour=red' % archive, "unknown option 'colour'")):
        result = occystrap('process', 'ocidir://%s' % image.path, uri)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1 and fragment in result.stderr, result.stderr
    two = tmp_path / 'two'
    for ref in ('a', 'b'):
        ok('process', 'ocidir://%s' % image.path, 'ocidir://%s?ref=%s' % (two, ref))
    result = occystrap('process', 'ocidir://%s' % two, 'tar://%s?ref=one:v1' % archive)
    assert result.returncode == 2 and 'names one image by ref=' in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path)) == ['src', 'two']


def test_a_corrupt_blob_in_an_oci_archive_is_one_line_and_writes_nothing(image, tmp_path):
    archive = tmp_path / 'good.tar'
    ok('process', 'ocidir://%s' % image.path, 'tar://%s?format=oci' % archive)
    data = bytearray(archive.read_bytes())
    with tarfile.open(archive) as tar:
        member = tar.getmember('blobs/sha256/' + image.layer_digests[1].split(':')[1])
    data[member.offset_data + member.size // 2] ^= 0xff
    archive.write_bytes(bytes(data))
    for destination in ('ocidir://%s' % (tmp_path / 'out'), 'tar://%s?format=oci' % (tmp_path / 'out.tar')):
        result = occystrap('process', 'tar://%s' % archive, destination)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and 'digest mismatch for blob %s' % image.layer_digests[1] in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ['good.tar', 'src']


def test_an_oci_archive_streamed_into_a_pipe_is_the_same_bytes(image, tmp_path):
    archive = tmp_path / 'file.tar'
    ok('process', 'ocidir://%s' % image.path, 'tar://%s?format=oci' % archive)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith('_proxy')}
    piped = subprocess.run([sys.executable, '-m', 'occystrap', 'process', 'ocidir://%s' % image.path,
                            'tar://-?format=oci'], capture_output=True, timeout=180, stdin=subprocess.DEVNULL, env=env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == archive.read_bytes()
