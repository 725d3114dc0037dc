"""tar:// input: docker save tarballs (legacy, Docker 25+) and OCI layout tarballs, read in place and verified.

Producers: skopeo (docker-archive: and oci-archive:) as an independent writer, plus tarballs built here byte by
byte with tarfile for the layouts and damage skopeo will not produce.
"""

import gzip
import json
import os
import tarfile

import pytest

from occystrap.errors import CorruptImageError, DigestMismatchError, OccystrapError
from occystrap.inputs.tarball import TarballInput
from occystrap.pipeline import ImageRef, RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.helpers import TARBALL_LAYERS as LAYERS
from tests.helpers import image_config, legacy_members, sha256, tar_directory, write_tar
from tests.services import build_oci_layout, layer_tar, skopeo_copy


def docker25_members(tags, tars):
    """Members of a Docker 25+ docker save: OCI layout blobs plus a manifest.json pointing into them."""
    config = image_config(tars)
    members = {}

    def blob(data):
        members['blobs/sha256/' + sha256(data).split(':')[1]] = data
        return sha256(data)

    layers = [{'mediaType': 'application/vnd.oci.image.layer.v1.tar', 'digest': blob(t), 'size': len(t)}
              for t in tars]
    manifest = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                           'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                                      'digest': blob(config), 'size': len(config)},
                           'layers': layers}).encode()
    manifest_digest = blob(manifest)
    members['index.json'] = json.dumps({'schemaVersion': 2, 'manifests': [
        {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': manifest_digest,
         'size': len(manifest), 'annotations': {'io.containerd.image.name': 'docker.io/library/' + tags[0],
                                                'org.opencontainers.image.ref.name': tags[0].split(':')[1]}}]}).encode()
    members['manifest.json'] = json.dumps([{'Config': 'blobs/sha256/' + sha256(config).split(':')[1],
                                            'RepoTags': tags,
                                            'Layers': ['blobs/sha256/' + sha256(t).split(':')[1] for t in tars]}
                                           ]).encode()
    members['oci-layout'] = b'{"imageLayoutVersion": "1.0.0"}'
    return members


def source(path, **settings):
    return TarballInput(parse_uri('tar://%s' % path, 'input'), RunContext(Settings(**settings)))


def read_layers(image):
    """Every layer's uncompressed bytes, read through the verifying stream to EOF."""
    out = []
    for layer in image.layers:
        with layer.open() as stream:
            out.append(stream.read(-1) + stream.read(-1) + stream.read(-1))
    return out


def drain(layer):
    with layer.open() as stream:
        while stream.read(65536):
            pass


@pytest.fixture
def tars():
    return [layer_tar(files) for files in LAYERS]


# --- the three layouts --------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_reads_docker_archive_written_by_skopeo(tmp_path, oci_image):
    archive = tmp_path / 'skopeo.tar'
    skopeo_copy(f'oci:{oci_image.path}:latest', f'docker-archive:{archive}:example/hello:v1')
    src = source(archive)
    refs = src.references()
    assert refs == [ImageRef('docker.io/example/hello', 'v1')]
    assert src.multi is False
    image = src.open(refs[0])
    assert image.config_digest == oci_image.config_digest
    assert [layer.diffid for layer in image.layers] == oci_image.diff_ids
    # skopeo stores layers uncompressed as <diffid>.tar behind <id>/layer.tar symlinks: the blob is the diffid.
    assert [layer.origin.digest for layer in image.layers] == oci_image.diff_ids
    assert [layer.created_by for layer in image.layers] == ['occystrap test layer 0', 'occystrap test layer 1']
    assert [sha256(data) for data in read_layers(image)] == oci_image.diff_ids


@pytest.mark.integration
def test_reads_oci_archive_written_by_skopeo(tmp_path):
    built = build_oci_layout(tmp_path / 'layout', LAYERS, compression='zstd', tag='v2')
    archive = tmp_path / 'oci.tar'
    skopeo_copy(f'oci:{built.path}:v2', f'oci-archive:{archive}:v2')
    src = source(archive)
    assert src.references() == [ImageRef('oci', 'v2')]   # the layout names a tag only: the file names the image
    image = src.open(src.references()[0])
    assert image.manifest_digest == built.manifest_digest
    assert [layer.origin.digest for layer in image.layers] == built.layer_digests
    assert {layer.origin.compression for layer in image.layers} == {'zstd'}
    assert [sha256(data) for data in read_layers(image)] == built.diff_ids


def test_reads_hand_built_legacy_docker_save(tmp_path, tars):
    path = write_tar(tmp_path / 'legacy.tar', legacy_members([(['busybox:1.36'], tars)]))
    src = source(path)
    assert src.references() == [ImageRef('busybox', '1.36')]
    image = src.open(ImageRef('busybox', '1.36'))
    assert image.name == 'busybox' and image.tag == '1.36'
    assert [layer.diffid for layer in image.layers] == [sha256(t) for t in tars]
    assert image.manifest_bytes is None and image.manifest_digest is None    # docker save stores no manifest
    assert [layer.origin.media_type for layer in image.layers] == \
        ['application/vnd.docker.image.rootfs.diff.tar'] * 2
    assert [layer.origin.size for layer in image.layers] == [len(t) for t in tars]
    # the empty_layer history entry is skipped when pairing history with layers
    assert [layer.created_by for layer in image.layers] == ['step 0', 'step 1']
    assert read_layers(image) == tars


def test_reads_docker25_layout_through_manifest_json(tmp_path, tars):
    path = write_tar(tmp_path / 'd25.tar', docker25_members(['alpine:3.19'], tars))
    src = source(path)
    # manifest.json wins over index.json: its RepoTags name the image as docker save wrote it
    assert src.references() == [ImageRef('alpine', '3.19')]
    image = src.open(src.references()[0])
    assert [layer.origin.digest for layer in image.layers] == [sha256(t) for t in tars]
    assert {layer.origin.media_type for layer in image.layers} == {'application/vnd.oci.image.layer.v1.tar'}
    assert read_layers(image) == tars


@pytest.mark.parametrize('compression', ['gzip', 'zstd', None])
def test_reads_oci_layout_tarball_in_each_compression(tmp_path, compression):
    built = build_oci_layout(tmp_path / 'layout', LAYERS, compression=compression, tag='v1')
    path = tar_directory(built.path, tmp_path / 'my_Image.tar')
    src = source(path)
    assert src.references() == [ImageRef('my-image', 'v1')]
    image = src.open(src.references()[0])
    assert image.config_digest == built.config_digest
    assert image.manifest_digest == built.manifest_digest
    assert sha256(image.manifest_bytes) == built.manifest_digest    # kept exactly, so a push keeps the digest
    assert [layer.origin.digest for layer in image.layers] == built.layer_digests
    assert [layer.origin.media_type for layer in image.layers] == [d['mediaType'] for d in built.manifest['layers']]
    assert [sha256(data) for data in read_layers(image)] == built.diff_ids


def _multi_platform_tarball(tmp_path):
    """An OCI layout whose index.json points at a nested index of an amd64 and an arm64/v8 manifest."""
    amd = build_oci_layout(tmp_path / 'amd', [{'arch': b'amd64\n'}], architecture='amd64', tag='v1')
    arm = build_oci_layout(tmp_path / 'arm', [{'arch': b'arm64\n'}], architecture='arm64', tag='v1')
    members = {'oci-layout': b'{"imageLayoutVersion": "1.0.0"}'}
    for built in (amd, arm):
        blobs = built.path / 'blobs' / 'sha256'
        for name in os.listdir(blobs):
            members['blobs/sha256/' + name] = (blobs / name).read_bytes()
    nested = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json', 'manifests': [
        {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': amd.manifest_digest,
         'size': len(members['blobs/sha256/' + amd.manifest_digest.split(':')[1]]),
         'platform': {'os': 'linux', 'architecture': 'amd64'}},
        {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': arm.manifest_digest,
         'size': len(members['blobs/sha256/' + arm.manifest_digest.split(':')[1]]),
         'platform': {'os': 'linux', 'architecture': 'arm64', 'variant': 'v8'}},
        {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': amd.manifest_digest,
         'size': 1, 'platform': {'os': 'unknown', 'architecture': 'unknown'}},
    ]}).encode()
    members['blobs/sha256/' + sha256(nested).split(':')[1]] = nested
    members['index.json'] = json.dumps({'schemaVersion': 2, 'manifests': [
        {'mediaType': 'application/vnd.oci.image.index.v1+json', 'digest': sha256(nested), 'size': len(nested),
         'annotations': {'org.opencontainers.image.ref.name': 'registry.example:5000/multi/arch:v1'}}]}).encode()
    return write_tar(tmp_path / 'multi-arch.tar', members), amd, arm


def test_nested_index_picks_the_configured_platform(tmp_path):
    path, amd, arm = _multi_platform_tarball(tmp_path)
    ref = ImageRef('registry.example:5000/multi/arch', 'v1')
    assert source(path).references() == [ref]
    assert source(path).open(ref).config_digest == amd.config_digest
    image = source(path, architecture='arm64', variant='v8').open(ref)
    assert image.config_digest == arm.config_digest
    assert image.manifest_digest == arm.manifest_digest == sha256(image.manifest_bytes)
    assert read_layers(image) == [layer_tar({'arch': b'arm64\n'})]
    with pytest.raises(OccystrapError, match=r'has no linux/s390x image .* \(it has: .*linux/amd64.*linux/arm64/v8'):
        source(path, architecture='s390x').open(ref)


def test_multi_image_docker_save_names_every_image(tmp_path, tars):
    other = layer_tar({'other': b'other image\n'})
    path = write_tar(tmp_path / 'two.tar', legacy_members([(['one:a'], tars), (None, [tars[0], other])]))
    src = source(path)
    refs = src.references()
    untagged_config = sha256(image_config([tars[0], other]))
    assert refs == [ImageRef('one', 'a'), ImageRef('two', digest=untagged_config)]
    assert src.multi is True
    second = src.open(refs[1])
    assert second.tag is None and second.config_digest == untagged_config
    assert read_layers(second) == [tars[0], other]
    with pytest.raises(OccystrapError, match='has no image nope:latest'):
        src.open(ImageRef('nope', 'latest'))


def test_gzip_compressed_docker_save_is_read(tmp_path, tars):
    plain = write_tar(tmp_path / 'plain.tar', legacy_members([(['gz:1'], tars)]))
    packed = tmp_path / 'packed.tar.gz'
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    src = source(packed)
    image = src.open(src.references()[0])
    assert read_layers(image) == tars
    src.close()


def test_compressed_legacy_layer_gets_its_blob_digest(tmp_path, tars):
    members = legacy_members([(['gzlayer:1'], tars)])
    layer_path = json.loads(members['manifest.json'])[0]['Layers'][0]
    compressed = gzip.compress(members[layer_path], mtime=0)
    members[layer_path] = compressed
    image = source(write_tar(tmp_path / 'gzl.tar', members)).open(ImageRef('gzlayer', '1'))
    assert image.layers[0].origin.digest == sha256(compressed)
    assert image.layers[0].origin.compression == 'gzip'
    assert read_layers(image) == tars


def test_layers_read_concurrently_from_one_tarball(tmp_path):
    many = [layer_tar({'f%d' % i: os.urandom(200_000)}) for i in range(8)]
    path = write_tar(tmp_path / 'many.tar', legacy_members([(['many:1'], many)]))
    ctx = RunContext(Settings(parallel=8))
    src = TarballInput(parse_uri('tar://%s' % path, 'input'), ctx)
    image = src.open(src.references()[0])
    try:
        paths = ctx.map(lambda layer: layer.materialize(ctx.workdir), image.layers)
        assert [open(p, 'rb').read() for p in paths] == many
    finally:
        ctx.close()


# --- hostile and corrupt tarballs ---------------------------------------------------------------------------------

def test_truncated_tarball_is_corrupt(tmp_path, tars):
    path = write_tar(tmp_path / 'cut.tar', legacy_members([(['cut:1'], tars)]))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptImageError, match=r'^tarball .*cut\.tar is truncated'):
        source(path).references()


def test_tarball_cut_at_a_member_boundary_is_corrupt(tmp_path, tars):
    path = write_tar(tmp_path / 'cut.tar', legacy_members([(['cut:1'], tars)]))
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    path.write_bytes(path.read_bytes()[:last.offset])   # drop `repositories` and the end-of-archive blocks
    with pytest.raises(CorruptImageError, match='no end-of-archive marker'):
        source(path).references()


def test_corrupted_layer_byte_fails_verification(tmp_path, tars):
    path = write_tar(tmp_path / 'flip.tar', legacy_members([(['flip:1'], tars)]))
    data = bytearray(path.read_bytes())
    offset = bytes(data).index(b'hello from a tarball')
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    image = source(path).open(ImageRef('flip', '1'))
    with pytest.raises(DigestMismatchError, match=sha256(tars[0])):
        drain(image.layers[0])
    drain(image.layers[1])    # the other layer is intact


def test_missing_layer_member_names_it(tmp_path, tars):
    members = legacy_members([(['gone:1'], tars)])
    layer_path = json.loads(members['manifest.json'])[0]['Layers'][1]
    del members[layer_path]
    with pytest.raises(CorruptImageError, match=r'gone\.tar has no member %s' % layer_path):
        source(write_tar(tmp_path / 'gone.tar', members)).open(ImageRef('gone', '1'))


def test_dangling_symlink_is_a_missing_member(tmp_path, tars):
    members = legacy_members([(['link:1'], tars)])
    layer_path = json.loads(members['manifest.json'])[0]['Layers'][0]
    members[layer_path] = ('symlink', '../nowhere.tar')
    with pytest.raises(CorruptImageError, match='has no member %s' % layer_path):
        source(write_tar(tmp_path / 'link.tar', members)).open(ImageRef('link', '1'))


def test_bad_manifest_json_names_the_member(tmp_path, tars):
    members = legacy_members([(['bad:1'], tars)])
    members['manifest.json'] = b'[{"Config": '
    with pytest.raises(CorruptImageError, match=r'bad\.tar member manifest\.json is not valid JSON'):
        source(write_tar(tmp_path / 'bad.tar', members)).references()


def test_layer_count_disagreeing_with_diff_ids(tmp_path, tars):
    members = legacy_members([(['count:1'], tars)])
    manifest = json.loads(members['manifest.json'])
    manifest[0]['Layers'] = manifest[0]['Layers'][:1]
    members['manifest.json'] = json.dumps(manifest).encode()
    with pytest.raises(CorruptImageError, match='names 1 layers but its config .* lists 2 diff_ids'):
        source(write_tar(tmp_path / 'count.tar', members)).open(ImageRef('count', '1'))


def test_config_that_does_not_match_its_name(tmp_path, tars):
    members = legacy_members([(['cfg:1'], tars)])
    config_name = json.loads(members['manifest.json'])[0]['Config']
    members[config_name] = members[config_name].replace(b'A=1', b'A=2')
    with pytest.raises(CorruptImageError, match='member %s does not match its digest' % config_name):
        source(write_tar(tmp_path / 'cfg.tar', members)).open(ImageRef('cfg', '1'))


def test_oci_blob_size_lie_is_corrupt(tmp_path):
    built = build_oci_layout(tmp_path / 'layout', LAYERS, tag='v1')
    blob = built.path / 'blobs' / 'sha256' / built.layer_digests[0].split(':')[1]
    blob.write_bytes(blob.read_bytes() + b'extra')
    src = source(tar_directory(built.path, tmp_path / 'lie.tar'))
    with pytest.raises(CorruptImageError, match='member blobs/sha256/%s is %d bytes but'
                       % (built.layer_digests[0].split(':')[1], blob.stat().st_size)):
        src.open(src.references()[0])


def test_not_a_tarball_and_missing_file(tmp_path):
    junk = tmp_path / 'junk.tar'
    junk.write_bytes(b'this is not a tar archive at all' * 40)
    with pytest.raises(CorruptImageError, match=r'junk\.tar is not a readable tar archive'):
        source(junk).references()
    with pytest.raises(OccystrapError, match=r'nope\.tar does not exist'):
        source(tmp_path / 'nope.tar').references()
    empty = write_tar(tmp_path / 'empty.tar', {'README': b'hi'})
    with pytest.raises(CorruptImageError, match='has neither manifest.json'):
        source(empty).references()


def test_symlink_loop_and_escaping_paths_stay_inside_the_tarball(tmp_path, tars):
    members = legacy_members([(['loop:1'], tars)])
    manifest = json.loads(members['manifest.json'])
    first, second = manifest[0]['Layers']
    members[first] = ('symlink', 'loop-b')
    members[first.split('/')[0] + '/loop-b'] = ('symlink', 'layer.tar')
    with pytest.raises(CorruptImageError, match='has no member %s' % first):
        source(write_tar(tmp_path / 'loop.tar', members)).open(ImageRef('loop', '1'))

    # a manifest naming a host path, or a link climbing out, only ever resolves to members of the tarball
    members = legacy_members([(['escape:1'], tars)])
    manifest = json.loads(members['manifest.json'])
    manifest[0]['Layers'][0] = '../../../../etc/passwd'
    members['manifest.json'] = json.dumps(manifest).encode()
    with pytest.raises(CorruptImageError, match=r'has no member \.\./\.\./\.\./\.\./etc/passwd'):
        source(write_tar(tmp_path / 'escape.tar', members)).open(ImageRef('escape', '1'))
    members = legacy_members([(['escape:1'], tars)])
    members[manifest[0]['Layers'][1]] = ('symlink', '../../../../../etc/hostname')
    with pytest.raises(CorruptImageError, match='has no member %s' % manifest[0]['Layers'][1]):
        source(write_tar(tmp_path / 'escape2.tar', members)).open(ImageRef('escape', '1'))


def test_manifest_entry_without_layers_or_config_is_corrupt(tmp_path, tars):
    members = legacy_members([(['odd:1'], tars)])
    members['manifest.json'] = json.dumps([{'RepoTags': ['odd:1'], 'Layers': []}]).encode()
    with pytest.raises(CorruptImageError, match='entry 0 of manifest.json has no Config'):
        source(write_tar(tmp_path / 'odd.tar', members)).references()
    members['manifest.json'] = json.dumps({'not': 'a list'}).encode()
    with pytest.raises(CorruptImageError, match='member manifest.json is not a list of images'):
        source(write_tar(tmp_path / 'odd2.tar', members)).references()
