"""registry:// input and the RegistryClient against a real docker-registry, checked with skopeo."""

import gzip
import json
import os
import shutil
import subprocess
import tarfile
import sys

import pytest

from occystrap import model
from occystrap.errors import CorruptImageError, DigestMismatchError, RegistryError
from occystrap.inputs.registry import RegistryInput
from occystrap.pipeline import ImageRef, RunContext
from occystrap.registry.client import RegistryClient
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.helpers import ScriptedServer, sha256
from tests.services import build_oci_layout, seed_image, skopeo_copy, skopeo_inspect

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx():
    context = RunContext(Settings(insecure=True))
    yield context
    context.close()


def open_image(ctx, uri):
    source = RegistryInput(parse_uri(uri, 'input'), ctx)
    refs = source.references()
    assert len(refs) == 1
    return source, source.open(refs[0])


def test_pull_by_tag_gives_lazy_verified_layers(registry, repo_name, oci_image, ctx):
    digest = seed_image(registry, repo_name, 'v1', oci_image.path)
    source, image = open_image(ctx, 'registry://%s/%s:v1' % (registry.host, repo_name))
    assert source.references() == [ImageRef(repo_name, 'v1', None)]
    assert image.manifest_digest == digest == oci_image.manifest_digest
    assert image.manifest_media_type == model.MEDIA_OCI_MANIFEST
    assert image.config_digest == oci_image.config_digest
    assert [layer.diffid for layer in image.layers] == oci_image.diff_ids
    assert [layer.origin.digest for layer in image.layers] == oci_image.layer_digests
    assert [layer.created_by for layer in image.layers] == ['occystrap test layer 0', 'occystrap test layer 1']
    assert image.layers[0].origin.location == model.BlobLocation(registry.host, repo_name)
    assert ctx.stats.downloaded == 0, 'layers must not be read before they are asked for'
    for layer, diffid in zip(image.layers, oci_image.diff_ids):
        path = layer.materialize(ctx.workdir)
        with open(path, 'rb') as f:
            assert sha256(f.read()) == diffid
    assert ctx.stats.downloaded == sum(d['size'] for d in oci_image.manifest['layers'])


def test_pull_by_digest_and_docker_schema2(registry, repo_name, oci_image, ctx):
    digest = seed_image(registry, repo_name, 'v2s2', oci_image.path, '--format', 'v2s2')
    source, image = open_image(ctx, 'registry://%s/%s@%s' % (registry.host, repo_name, digest))
    assert image.tag is None and image.manifest_digest == digest
    assert image.manifest_media_type == model.MEDIA_DOCKER_MANIFEST
    assert image.config_media_type == model.MEDIA_DOCKER_CONFIG
    assert image.layers[1].origin.media_type == model.MEDIA_DOCKER_LAYER_GZIP
    with image.layers[1].open() as reader:
        data = reader.read(-1)
        while True:
            more = reader.read(1 << 16)
            if not more:
                break
            data += more
    assert sha256(data) == oci_image.diff_ids[1]


def test_missing_image_is_a_one_line_error_with_the_registry_reason(registry, ctx):
    with pytest.raises(RegistryError) as raised:
        open_image(ctx, 'registry://%s/test/nope:latest' % registry.host)
    message = str(raised.value)
    assert message.startswith('registry %s answered 404 for test/nope:latest' % registry.host)
    assert 'NAME_UNKNOWN' in message or 'MANIFEST_UNKNOWN' in message
    assert '\n' not in message


def test_wrong_digest_is_refused(registry, repo_name, oci_image, ctx):
    seed_image(registry, repo_name, 'v1', oci_image.path)
    client = RegistryClient(ctx.http, registry.host, insecure=True)
    data, media_type, digest = client.get_manifest(repo_name, 'v1')
    assert digest == oci_image.manifest_digest and media_type == model.MEDIA_OCI_MANIFEST
    assert json.loads(data) == oci_image.manifest
    with pytest.raises(RegistryError) as raised:
        client.get_manifest(repo_name, 'sha256:' + '0' * 64)
    assert raised.value.status == 404


def _multi_arch_layout(tmp_path):
    """An OCI layout whose 'latest' is an index of linux/amd64 and linux/arm64/v8 images."""
    amd = build_oci_layout(tmp_path / 'amd', layers=[{'arch': b'amd64\n'}], architecture='amd64')
    arm = build_oci_layout(tmp_path / 'arm', layers=[{'arch': b'arm64\n'}], architecture='arm64')
    layout = tmp_path / 'multi'
    shutil.copytree(amd.path, layout)
    for blob in (arm.path / 'blobs' / 'sha256').iterdir():
        shutil.copy(blob, layout / 'blobs' / 'sha256' / blob.name)
    entries = []
    for image, platform in ((amd, {'os': 'linux', 'architecture': 'amd64'}),
                            (arm, {'os': 'linux', 'architecture': 'arm64', 'variant': 'v8'})):
        size = len(json.dumps(image.manifest, sort_keys=True, separators=(',', ':')).encode())
        entries.append({'mediaType': model.MEDIA_OCI_MANIFEST, 'digest': image.manifest_digest, 'size': size,
                        'platform': platform})
    index = json.dumps({'schemaVersion': 2, 'mediaType': model.MEDIA_OCI_INDEX, 'manifests': entries}).encode()
    (layout / 'blobs' / 'sha256' / sha256(index).split(':')[1]).write_bytes(index)
    (layout / 'index.json').write_text(json.dumps({
        'schemaVersion': 2, 'manifests': [{'mediaType': model.MEDIA_OCI_INDEX, 'digest': sha256(index),
                                           'size': len(index),
                                           'annotations': {'org.opencontainers.image.ref.name': 'latest'}}]}))
    return layout, amd, arm, sha256(index)


def test_multi_arch_index_picks_the_platform(registry, repo_name, tmp_path, ctx):
    layout, amd, arm, index_digest = _multi_arch_layout(tmp_path)
    skopeo_copy('oci:%s:latest' % layout, 'docker://%s/%s:multi' % (registry.host, repo_name), '--all')
    base = 'registry://%s/%s:multi' % (registry.host, repo_name)
    _, image = open_image(ctx, base)
    assert image.manifest_digest == amd.manifest_digest and image.platform == 'linux/amd64'
    _, image = open_image(ctx, base + '?arch=arm64&variant=v8')
    assert image.manifest_digest == arm.manifest_digest and image.platform == 'linux/arm64'
    with image.layers[0].open() as reader:
        assert b'arm64\n' in reader.read()
    arm_ctx = RunContext(Settings(insecure=True, architecture='arm64'))
    try:
        _, image = open_image(arm_ctx, base)
        assert image.manifest_digest == arm.manifest_digest
    finally:
        arm_ctx.close()
    client = RegistryClient(ctx.http, registry.host, insecure=True)
    assert client.get_manifest(repo_name, 'multi')[1:] == (model.MEDIA_OCI_INDEX, index_digest)
    with pytest.raises(RegistryError) as raised:
        open_image(ctx, base + '?arch=s390x')
    assert str(raised.value) == ('%s:multi on registry %s has no linux/s390x image; available: linux/amd64, '
                                 'linux/arm64/v8' % (repo_name, registry.host))


def test_layer_count_must_match_the_config(registry, repo_name, ctx):
    client = RegistryClient(ctx.http, registry.host, insecure=True)
    config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                         'rootfs': {'type': 'layers', 'diff_ids': [sha256(b'a'), sha256(b'b')]}}).encode()
    layer = b'not really a tar'
    client.upload_blob(repo_name, sha256(config), config)
    client.upload_blob(repo_name, sha256(layer), layer)
    manifest = json.dumps({'schemaVersion': 2, 'mediaType': model.MEDIA_OCI_MANIFEST,
                           'config': {'mediaType': model.MEDIA_OCI_CONFIG, 'digest': sha256(config),
                                      'size': len(config)},
                           'layers': [{'mediaType': model.MEDIA_OCI_LAYER_TAR, 'digest': sha256(layer),
                                       'size': len(layer)}]}).encode()
    client.put_manifest(repo_name, 'broken', manifest, model.MEDIA_OCI_MANIFEST)
    with pytest.raises(CorruptImageError) as raised:
        open_image(ctx, 'registry://%s/%s:broken' % (registry.host, repo_name))
    assert 'has 1 layers but its config lists 2 diff_ids' in str(raised.value)


def test_tags_and_catalog_follow_pagination(registry, repo_name, oci_image, ctx):
    for tag in ('a', 'b', 'c'):
        seed_image(registry, repo_name, tag, oci_image.path)
    seed_image(registry, repo_name + '-2', 'a', oci_image.path)
    client = RegistryClient(ctx.http, registry.host, insecure=True)
    assert sorted(client.list_tags(repo_name, page_size=2)) == ['a', 'b', 'c']
    before = ctx.http.requests
    repositories = client.catalog(page_size=1)
    assert {repo_name, repo_name + '-2'} <= set(repositories) and len(repositories) == len(set(repositories))
    assert ctx.http.requests - before >= len(repositories), 'one repository per page'


def test_tag_pagination_follows_relative_link_headers(ctx):
    # docker-registry 2.8 does not paginate tags, so a scripted server plays a registry that does.
    pages = [(200, {'Link': '</v2/x/y/tags/list?last=b&n=2>; rel="next"'}, b'{"name":"x/y","tags":["a","b"]}'),
             (200, {}, b'{"name":"x/y","tags":["c"]}')]
    with ScriptedServer(pages) as server:
        client = RegistryClient(ctx.http, server.host, insecure=True)
        assert client.list_tags('x/y', page_size=2) == ['a', 'b', 'c']
        assert [path for _, path, _ in server.seen] == ['/v2/x/y/tags/list?n=2', '/v2/x/y/tags/list?last=b&n=2']


def _push_image(client, name, tag, layers, **upload):
    """Upload the given layer blobs and a config, then the manifest; returns the manifest bytes."""
    descriptors = []
    for blob in layers:
        assert client.upload_blob(name, sha256(blob), blob, **upload) == sha256(blob)
        descriptors.append({'mediaType': model.MEDIA_OCI_LAYER_GZIP, 'digest': sha256(blob), 'size': len(blob)})
    config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                         'rootfs': {'type': 'layers', 'diff_ids': ['sha256:' + '1' * 64] * len(layers)}}).encode()
    client.upload_blob(name, sha256(config), config)
    manifest = json.dumps({'schemaVersion': 2, 'mediaType': model.MEDIA_OCI_MANIFEST,
                           'config': {'mediaType': model.MEDIA_OCI_CONFIG, 'digest': sha256(config),
                                      'size': len(config)},
                           'layers': descriptors}).encode()
    assert client.put_manifest(name, tag, manifest, model.MEDIA_OCI_MANIFEST) == sha256(manifest)
    return manifest


def test_uploads_monolithic_and_chunked_land_intact(registry, repo_name, ctx, tmp_path):
    client = RegistryClient(ctx.http, registry.host, insecure=True, monolithic_max=100_000, chunk_size=65_536)
    # Real gzip data, since skopeo checks that layers said to be gzip are.
    small = gzip.compress(os.urandom(5000), compresslevel=1)
    large = gzip.compress(os.urandom(300_001), compresslevel=1)      # chunked: four full chunks and a short one
    path = tmp_path / 'large.bin'
    path.write_bytes(large)
    sent = []
    assert client.upload_blob(repo_name, sha256(large), str(path), on_bytes=sent.append) == sha256(large)
    assert sum(sent) == len(large) and len(sent) == 5
    manifest = _push_image(client, repo_name, 'pushed', [small, large])
    assert client.blob_exists(repo_name, sha256(large)) == len(large)
    assert client.blob_exists(repo_name, sha256(small)) == len(small)
    assert client.blob_exists(repo_name, sha256(b'absent')) is None
    raw = skopeo_inspect('docker://%s/%s:pushed' % (registry.host, repo_name), raw=True, parse=False)
    assert raw == manifest
    # skopeo verifies every blob digest while copying: an independent check of what we uploaded.
    skopeo_copy('docker://%s/%s:pushed' % (registry.host, repo_name), 'oci:%s:x' % (tmp_path / 'copy'))
    assert (tmp_path / 'copy' / 'blobs' / 'sha256' / sha256(large).split(':')[1]).read_bytes() == large
    with client.open_blob(repo_name, sha256(large), len(large)) as reader:
        assert reader.read() == large
    assert client.get_blob_bytes(repo_name, sha256(small)) == small


def test_streamed_upload_of_unknown_size(registry, repo_name, ctx, tmp_path):
    client = RegistryClient(ctx.http, registry.host, insecure=True, chunk_size=70_000)
    data = os.urandom(150_000)
    path = tmp_path / 'data'
    path.write_bytes(data)
    assert client.upload_blob(repo_name, sha256(data), lambda: open(path, 'rb')) == sha256(data)
    assert client.get_blob_bytes(repo_name, sha256(data)) == data


def test_upload_with_a_wrong_digest_is_refused(registry, repo_name, ctx):
    client = RegistryClient(ctx.http, registry.host, insecure=True)
    with pytest.raises(RegistryError) as raised:
        client.upload_blob(repo_name, sha256(b'claimed'), b'actual bytes')
    assert raised.value.status == 400 and 'DIGEST_INVALID' in str(raised.value)


def test_mount_links_a_blob_across_repositories(registry, repo_name, ctx):
    client = RegistryClient(ctx.http, registry.host, insecure=True)
    blob = os.urandom(2048)
    client.upload_blob(repo_name, sha256(blob), blob)
    assert client.mount_blob(repo_name + '-copy', sha256(blob), repo_name) is True
    assert client.blob_exists(repo_name + '-copy', sha256(blob)) == len(blob)
    other = os.urandom(1024)
    # Not in the source repository: the registry opens an upload instead, which upload_blob then uses.
    assert client.mount_blob(repo_name + '-copy', sha256(other), repo_name) is False
    posts = sum(1 for e in registry.access_log() if e.method == 'POST')
    client.upload_blob(repo_name + '-copy', sha256(other), other)
    assert sum(1 for e in registry.access_log() if e.method == 'POST') == posts
    assert client.get_blob_bytes(repo_name + '-copy', sha256(other)) == other


def test_corrupt_config_blob_is_detected(registry, repo_name, oci_image, ctx):
    seed_image(registry, repo_name, 'v1', oci_image.path)
    # Overwrite the stored config blob on disk so the registry serves bytes that do not match their digest.
    hexdigest = oci_image.config_digest.split(':')[1]
    data_path = (registry.storage_dir / 'docker' / 'registry' / 'v2' / 'blobs' / 'sha256' / hexdigest[:2]
                 / hexdigest / 'data')
    original = data_path.read_bytes()
    data_path.write_bytes(original.replace(b'amd64', b'AMD64'))
    try:
        with pytest.raises(DigestMismatchError) as raised:
            open_image(ctx, 'registry://%s/%s:v1' % (registry.host, repo_name))
        assert oci_image.config_digest in str(raised.value)
    finally:
        data_path.write_bytes(original)


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_cli_info_over_tls_reports_http2(tls_registry, repo_name, oci_image):
    seed_image(tls_registry, repo_name, 'v1', oci_image.path)
    seen = len(tls_registry.access_log())
    result = run_cli('--ca-cert', str(tls_registry.ca_path), '--http2', '--verbose', '-O', 'json', 'info',
                     'registry://%s/%s:v1' % (tls_registry.host, repo_name))
    assert result.returncode == 0, result.stderr
    [described] = json.loads(result.stdout)
    assert described['manifest_digest'] == oci_image.manifest_digest
    assert [layer['diffid'] for layer in described['layers']] == oci_image.diff_ids
    assert 'manifest %s from %s over HTTP/2' % (oci_image.manifest_digest, tls_registry.host) in result.stderr
    served = tls_registry.access_log()[seen:]
    # Manifests over HTTP/2; blob downloads take HTTP/1.1 connections by design (registry/http.py).
    assert {e.protocol for e in served if '/manifests/' in e.path} == {'HTTP/2.0'}
    assert {e.protocol for e in served if e.method == 'GET' and '/blobs/' in e.path} == {'HTTP/1.1'}


def test_cli_http2_from_the_environment(tls_registry, repo_name, oci_image):
    # The command leaves h2 unimported unless HTTP/2 is asked for; OCCYSTRAP_HTTP2 asks for it too.
    seed_image(tls_registry, repo_name, 'v1', oci_image.path)
    seen = len(tls_registry.access_log())
    result = subprocess.run([sys.executable, '-m', 'occystrap', '--ca-cert', str(tls_registry.ca_path), 'info',
                             'registry://%s/%s:v1' % (tls_registry.host, repo_name)], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, OCCYSTRAP_HTTP2='1'))
    assert result.returncode == 0, result.stderr
    served = tls_registry.access_log()[seen:]
    assert {e.protocol for e in served if '/manifests/' in e.path} == {'HTTP/2.0'}


def test_cli_pull_to_tar_and_dir(registry, repo_name, oci_image, tmp_path):
    seed_image(registry, repo_name, 'v1', oci_image.path)
    source = 'registry://%s/%s:v1' % (registry.host, repo_name)
    tarball = tmp_path / 'image.tar'
    result = run_cli('--insecure', 'process', source, 'tar://%s' % tarball)
    assert result.returncode == 0, result.stderr
    # skopeo reads the tarball independently: same config, same uncompressed layers.
    config = skopeo_inspect('docker-archive:%s' % tarball, config=True, raw=True, parse=False)
    assert sha256(config) == oci_image.config_digest
    assert skopeo_inspect('docker-archive:%s' % tarball)['Layers'] == oci_image.diff_ids
    # One layer was decompressed straight into the tarball (header patched afterwards), the other copied in from
    # its temporary file: GNU tar lists both with their sizes and every member's bytes hash to its diffid.
    listing = subprocess.run(['tar', '-tvf', str(tarball)], capture_output=True, text=True, check=True).stdout
    with tarfile.open(tarball) as tar:
        for diffid in oci_image.diff_ids:
            member = tar.getmember('blobs/sha256/' + diffid.split(':')[1])
            assert sha256(tar.extractfile(member).read()) == diffid
            assert ' %d 1970-01-01 00:00 %s' % (member.size, member.name) in listing
    assert sorted(os.listdir(tmp_path)) == ['image.tar', 'oci-image']    # no temporary file left beside it
    directory = tmp_path / 'dir'
    result = run_cli('--insecure', 'process', source, 'dir://%s' % directory)
    assert result.returncode == 0, result.stderr
    for diffid in oci_image.diff_ids:
        assert sha256((directory / diffid.split(':')[1] / 'layer.tar').read_bytes()) == diffid


def test_cli_missing_image_exits_1_with_one_line(registry):
    result = run_cli('--insecure', 'info', 'registry://%s/test/nope:latest' % registry.host)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        'error: registry %s answered 404 for test/nope:latest' % registry.host)
    assert 'Traceback' not in result.stderr


def test_registry_to_registry_copy_keeps_the_manifest_digest(registry, repo_name, oci_image):
    seed_image(registry, repo_name, 'v1', oci_image.path)
    result = run_cli('--insecure', 'process', 'registry://%s/%s:v1' % (registry.host, repo_name),
                     'registry://%s/%s-copy:v1' % (registry.host, repo_name))
    assert result.returncode == 0, result.stderr
    raw = skopeo_inspect('docker://%s/%s-copy:v1' % (registry.host, repo_name), raw=True, parse=False)
    assert sha256(raw) == oci_image.manifest_digest
