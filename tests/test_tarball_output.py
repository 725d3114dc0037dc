"""tar:// output: a Docker 25+ style tarball that skopeo (docker-archive: and oci-archive:) and podman accept.

Every check of what we wrote uses an independent reader: skopeo, podman, GNU tar, or raw tarfile/hashlib.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from occystrap.errors import CorruptImageError, DigestMismatchError
from occystrap.inputs.tarball import TarballInput
from occystrap.model import MEDIA_OCI_LAYER_TAR, Blob, Image, Layer
from occystrap.outputs.tarball import TarballOutput
from occystrap.pipeline import ImageRef, RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.services import build_oci_layout, layer_tar, skopeo_copy, skopeo_inspect
from tests.helpers import TARBALL_LAYERS as LAYERS
from tests.helpers import image_config, legacy_members, tar_directory, write_tar


def sha256_of(path):
    return 'sha256:' + hashlib.sha256(open(path, 'rb').read()).hexdigest()


def occystrap(*args):
    return subprocess.run([sys.executable, '-m', 'occystrap', *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def tar_names(path):
    """Members as GNU tar lists them."""
    result = subprocess.run(['tar', 'tf', str(path)], capture_output=True, text=True, check=True)
    return result.stdout.split()


def member_json(path, name):
    with tarfile.open(path) as tar:
        return json.load(tar.extractfile(name))


def read_back(path):
    """Every image of a tarball through our own input: {ref: (config digest, diffids, layer bytes)}."""
    src = TarballInput(parse_uri('tar://%s' % path, 'input'), RunContext())
    out = {}
    for ref in src.references():
        image = src.open(ref)
        data = []
        for layer in image.layers:
            with layer.open() as stream:
                data.append(b''.join(iter(lambda: stream.read(65536), b'')))
        out[ref] = (image.config_digest, [layer.diffid for layer in image.layers], data)
    return out


def leftovers(directory, keep):
    return sorted(set(os.listdir(directory)) - set(keep))


@pytest.fixture
def skopeo_archive(tmp_path, oci_image):
    """The test image as a docker-archive written by skopeo, named example/hello:v1."""
    path = tmp_path / 'src' / 'skopeo.tar'
    path.parent.mkdir()
    skopeo_copy(f'oci:{oci_image.path}:latest', f'docker-archive:{path}:example/hello:v1')
    return path


# --- round trips checked by independent tools ----------------------------------------------------------------------

@pytest.mark.integration
def test_round_trip_is_accepted_by_skopeo_and_byte_identical(tmp_path, oci_image, skopeo_archive):
    first, again, second = tmp_path / 'first.tar', tmp_path / 'again.tar', tmp_path / 'second.tar'
    for src, dst in ((skopeo_archive, first), (skopeo_archive, again), (first, second)):
        result = occystrap('process', 'tar://%s' % src, 'tar://%s' % dst)
        assert result.returncode == 0, result.stderr
        assert 'done: 1 image, 2 layers' in result.stderr

    # the same image gives the same bytes, whether it came from skopeo's tarball or from ours
    assert first.read_bytes() == again.read_bytes() == second.read_bytes()

    hexes = [d.split(':')[1] for d in oci_image.diff_ids]
    config_hex = oci_image.config_digest.split(':')[1]
    names = tar_names(first)
    blobs = sorted(n for n in names if n.startswith('blobs/sha256/') and n != 'blobs/sha256/')
    assert names[:2] == ['blobs/', 'blobs/sha256/']
    assert names[-4:] == ['index.json', 'manifest.json', 'oci-layout', 'repositories']
    assert set(blobs) >= {'blobs/sha256/' + h for h in hexes + [config_hex]}
    assert len(blobs) == 4      # two layers, the config, one OCI manifest

    manifest = member_json(first, 'manifest.json')
    assert manifest == [{'Config': 'blobs/sha256/' + config_hex, 'RepoTags': ['docker.io/example/hello:v1'],
                         'Layers': ['blobs/sha256/' + h for h in hexes]}]
    with tarfile.open(first) as tar:
        infos = tar.getmembers()
        assert {(i.mtime, i.uid, i.gid, i.uname, i.gname) for i in infos} == {(0, 0, 0, '', '')}
        for h, diffid in zip(hexes, oci_image.diff_ids):
            layer = tar.extractfile('blobs/sha256/' + h).read()
            assert 'sha256:' + hashlib.sha256(layer).hexdigest() == diffid   # stored uncompressed

    assert skopeo_inspect(f'docker-archive:{first}')['Layers'] == oci_image.diff_ids
    assert skopeo_inspect(f'docker-archive:{first}', config=True)['rootfs']['diff_ids'] == oci_image.diff_ids
    skopeo_copy(f'docker-archive:{first}', f'oci:{tmp_path / "copied"}:copied')
    assert skopeo_inspect(f'oci:{tmp_path / "copied"}:copied', config=True)['rootfs']['diff_ids'] == \
        oci_image.diff_ids
    # the same file is an OCI layout archive too, and that view keeps the config bytes (and digest) exactly
    skopeo_copy(f'oci-archive:{first}:v1', f'oci:{tmp_path / "via-oci"}:v1')
    raw = skopeo_inspect(f'oci:{tmp_path / "via-oci"}:v1', raw=True)
    assert raw['config']['digest'] == oci_image.config_digest

    back = read_back(second)
    assert back == {ImageRef('docker.io/example/hello', 'v1'): (
        oci_image.config_digest, oci_image.diff_ids, [layer_tar(files) for files in (
            {'etc': {'type': 'dir'}, 'etc/hello.txt': b'hello from occystrap tests\n'},
            {'usr/bin/tool': {'type': 'file', 'data': b'#!/bin/sh\necho tool\n', 'mode': 0o755},
             'usr/bin/tool-link': {'type': 'symlink', 'target': 'tool'}})])}
    assert leftovers(tmp_path, ['oci-image', 'src', 'first.tar', 'again.tar', 'second.tar', 'copied', 'via-oci']) == []


@pytest.mark.integration
@pytest.mark.parametrize('compression', ['gzip', 'zstd'])
def test_compressed_oci_layout_comes_out_uncompressed(tmp_path, compression):
    built = build_oci_layout(tmp_path / 'layout', LAYERS, compression=compression, tag='v3')
    src = tar_directory(built.path, tmp_path / 'app.tar')
    out = tmp_path / 'out.tar'
    result = occystrap('process', 'tar://%s' % src, 'tar://%s' % out)
    assert result.returncode == 0, result.stderr
    assert member_json(out, 'manifest.json')[0]['RepoTags'] == ['app:v3']
    inspected = skopeo_inspect(f'docker-archive:{out}')
    assert inspected['Layers'] == built.diff_ids
    assert sha256_of_member(out, member_json(out, 'manifest.json')[0]['Config']) == built.config_digest


def sha256_of_member(path, name):
    with tarfile.open(path) as tar:
        return 'sha256:' + hashlib.sha256(tar.extractfile(name).read()).hexdigest()


@pytest.mark.integration
def test_podman_loads_our_tarball(tmp_path, podman_service, skopeo_archive, oci_image):
    out = tmp_path / 'for-podman.tar'
    result = occystrap('process', 'tar://%s' % skopeo_archive, 'tar://%s' % out)
    assert result.returncode == 0, result.stderr
    podman_service.podman('load', '-i', str(out))
    loaded = [i for i in podman_service.images() if 'docker.io/example/hello:v1' in (i.get('Names') or [])]
    assert len(loaded) == 1, podman_service.images()
    inspected = json.loads(podman_service.podman('image', 'inspect', 'docker.io/example/hello:v1').stdout)
    assert inspected[0]['RootFS']['Layers'] == oci_image.diff_ids


# --- several images in one tarball ---------------------------------------------------------------------------------

def test_multi_image_tarball_in_and_out_shares_layers(tmp_path):
    base, app, tool = (layer_tar({'base': b'base layer\n'}), layer_tar({'app': b'app layer\n'}),
                       layer_tar({'tool': b'tool layer\n'}))
    src = write_tar(tmp_path / 'two.tar', legacy_members([(['web:1'], [base, app]), (None, [base, tool])]))
    out = tmp_path / 'out.tar'
    result = occystrap('-J', '2', 'process', 'tar://%s' % src, 'tar://%s' % out)
    assert result.returncode == 0, result.stderr
    assert 'done: 2 images, 4 layers' in result.stderr

    names = tar_names(out)
    for layer in (base, app, tool):
        assert names.count('blobs/sha256/' + hashlib.sha256(layer).hexdigest()) == 1
    entries = sorted(member_json(out, 'manifest.json'), key=lambda e: e['RepoTags'] or [])
    untagged_config = 'sha256:' + hashlib.sha256(image_config([base, tool])).hexdigest()
    assert [e['RepoTags'] for e in entries] == [None, ['web:1']]
    assert entries[0]['Config'] == 'blobs/sha256/' + untagged_config.split(':')[1]

    back = read_back(out)
    # the untagged image keeps no name of its own, so reading it back names it after the file, by config digest
    assert set(back) == {ImageRef('web', '1'), ImageRef('out', digest=untagged_config)}
    assert back[ImageRef('web', '1')][2] == [base, app]
    assert back[ImageRef('out', digest=untagged_config)] == (untagged_config, [
        'sha256:' + hashlib.sha256(t).hexdigest() for t in (base, tool)], [base, tool])


@pytest.mark.integration
def test_multi_image_tarball_is_readable_image_by_image_with_skopeo(tmp_path):
    base, app, tool = (layer_tar({'base': b'base\n'}), layer_tar({'app': b'app\n'}), layer_tar({'tool': b'tool\n'}))
    src = write_tar(tmp_path / 'two.tar', legacy_members([(['web:1'], [base, app]), (['tool:2'], [base, tool])]))
    out = tmp_path / 'out.tar'
    result = occystrap('-J', '1', 'process', 'tar://%s' % src, 'tar://%s' % out)
    assert result.returncode == 0, result.stderr

    def digest(data):
        return 'sha256:' + hashlib.sha256(data).hexdigest()

    assert skopeo_inspect(f'docker-archive:{out}:web:1')['Layers'] == [digest(base), digest(app)]
    assert skopeo_inspect(f'docker-archive:{out}:tool:2')['Layers'] == [digest(base), digest(tool)]
    index = member_json(out, 'index.json')
    assert [m['annotations'] for m in index['manifests']] == [
        {'io.containerd.image.name': 'docker.io/library/web:1', 'org.opencontainers.image.ref.name': '1'},
        {'io.containerd.image.name': 'docker.io/library/tool:2', 'org.opencontainers.image.ref.name': '2'}]


def test_same_image_under_two_tags_is_one_entry_with_two_repo_tags(tmp_path):
    ctx = RunContext()
    output = TarballOutput(parse_uri('tar://%s' % (tmp_path / 'tags.tar'), 'output'), ctx)
    data = layer_tar({'x': b'x'})
    layer_file = tmp_path / 'layer.tar'
    layer_file.write_bytes(data)
    config = image_config([data])
    for tag in ('a', 'b'):
        output.write(Image(name='repo/img', tag=tag, config_bytes=config,
                           layers=[Layer.from_file(str(layer_file))]))
    output.finalize()
    ctx.close()
    assert member_json(tmp_path / 'tags.tar', 'manifest.json')[0]['RepoTags'] == ['repo/img:a', 'repo/img:b']
    assert tar_names(tmp_path / 'tags.tar').count('blobs/sha256/' + hashlib.sha256(data).hexdigest()) == 1
    assert layer_file.read_bytes() == data      # a layer we do not own is left alone
    # stats count each stored blob once: the layer, the config and one manifest (both tags share it)
    assert ctx.stats.bytes == len(data) + len(config) + member_size(tmp_path / 'tags.tar', 2)


def member_size(path, position):
    with tarfile.open(path) as tar:
        return [m for m in tar.getmembers() if m.isreg()][position].size


# --- failures leave nothing behind ---------------------------------------------------------------------------------

def _assert_failed_cleanly(result, directory, keep):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    assert 'Traceback' not in result.stderr
    assert leftovers(directory, keep) == []     # no out.tar, no out.tar.partial-*, no .occystrap-tmp-*
    return lines[0]


def test_truncated_tarball_fails_with_one_line_and_no_output(tmp_path):
    src = write_tar(tmp_path / 'bad.tar', legacy_members([(['bad:1'], [layer_tar(f) for f in LAYERS])]))
    src.write_bytes(src.read_bytes()[:3000])
    result = occystrap('process', 'tar://%s' % src, 'tar://%s' % (tmp_path / 'out.tar'))
    line = _assert_failed_cleanly(result, tmp_path, ['bad.tar'])
    assert 'bad.tar' in line and 'truncated' in line


def test_corrupted_layer_byte_fails_with_one_line_and_no_output(tmp_path):
    tars = [layer_tar(f) for f in LAYERS]
    src = write_tar(tmp_path / 'bad.tar', legacy_members([(['bad:1'], tars)]))
    data = bytearray(src.read_bytes())
    data[bytes(data).index(b'echo tool')] ^= 0x20
    src.write_bytes(bytes(data))
    result = occystrap('process', 'tar://%s' % src, 'tar://%s' % (tmp_path / 'out.tar'))
    line = _assert_failed_cleanly(result, tmp_path, ['bad.tar'])
    assert 'digest mismatch' in line and hashlib.sha256(tars[1]).hexdigest() in line


def test_second_image_failing_after_the_first_was_written_leaves_nothing(tmp_path):
    ctx = RunContext(Settings(parallel=2))
    out = tmp_path / 'out.tar'
    output = TarballOutput(parse_uri('tar://%s' % out, 'output'), ctx)
    good, bad = layer_tar({'good': b'good'}), layer_tar({'bad': b'bad'})
    (tmp_path / 'good.tar').write_bytes(good)
    output.write(Image(name='good', tag='1', config_bytes=image_config([good]),
                       layers=[Layer.from_file(str(tmp_path / 'good.tar'))]))
    assert [n for n in os.listdir(tmp_path) if n.startswith('out.tar.partial-')]

    bad_digest = 'sha256:' + hashlib.sha256(bad).hexdigest()
    lying = Blob(digest=bad_digest, media_type=MEDIA_OCI_LAYER_TAR, size=len(bad),
                 opener=lambda: io.BytesIO(bad[:-1] + b'\x01'))
    with pytest.raises(DigestMismatchError):
        output.write(Image(name='bad', tag='1', config_bytes=image_config([bad]),
                           layers=[Layer(diffid=bad_digest, origin=lying)]))
    output.abort()
    ctx.close()
    assert leftovers(tmp_path, ['good.tar']) == []


class Trickle(io.RawIOBase):
    """A source that answers reads a few bytes at a time, as a socket may."""

    def __init__(self, data):
        self.data = data

    def readable(self):
        return True

    def read(self, size=-1):
        out, self.data = self.data[:7], self.data[7:]
        return out


def test_streamed_layer_that_lies_is_rolled_back_and_the_rest_finalizes(tmp_path):
    ctx = RunContext()
    out = tmp_path / 'out.tar'
    output = TarballOutput(parse_uri('tar://%s' % out, 'output'), ctx)
    good, bad = layer_tar({'good': b'good' * 5000}), layer_tar({'bad': b'bad' * 5000})

    def streamed(data, served):
        digest = 'sha256:' + hashlib.sha256(data).hexdigest()
        blob = Blob(digest=digest, media_type=MEDIA_OCI_LAYER_TAR, size=len(data), opener=lambda: Trickle(served))
        return Layer(diffid=digest, origin=blob)

    output.write(Image(name='good', tag='1', config_bytes=image_config([good]), layers=[streamed(good, good)]))
    with pytest.raises(DigestMismatchError):
        output.write(Image(name='bad', tag='1', config_bytes=image_config([bad]),
                           layers=[streamed(bad, bad[:-1] + b'\x01')]))
    with pytest.raises(CorruptImageError, match='is %d bytes, expected %d' % (len(bad) - 100, len(bad))):
        output.write(Image(name='short', tag='1', config_bytes=image_config([bad]),
                           layers=[streamed(bad, bad[:-100])]))
    output.finalize()
    ctx.close()
    with tarfile.open(out) as tar:
        blob_bytes = sum(m.size for m in tar.getmembers() if m.isreg() and m.name.startswith('blobs/'))
    assert ctx.stats.bytes == blob_bytes      # the failed images' bytes were neither kept nor counted
    assert [e['RepoTags'] for e in member_json(out, 'manifest.json')] == [['good:1']]
    assert read_back(out)[ImageRef('good', '1')][2] == [good]
    assert hashlib.sha256(bad).hexdigest() not in ' '.join(tar_names(out))
    assert subprocess.run(['tar', 'tf', str(out)], capture_output=True).stderr == b''
    assert leftovers(tmp_path, ['out.tar']) == []


def test_failed_image_of_a_multi_image_source_leaves_the_others_written(tmp_path):
    good, bad = layer_tar({'good': b'good image\n'}), layer_tar({'bad': b'bad image\n'})
    src = write_tar(tmp_path / 'two.tar', legacy_members([(['good:1'], [good]), (['bad:1'], [bad])]))
    data = bytearray(src.read_bytes())
    data[bytes(data).index(b'bad image')] ^= 0x01
    src.write_bytes(bytes(data))
    out = tmp_path / 'out.tar'
    result = occystrap('process', 'tar://%s' % src, 'tar://%s' % out)
    assert result.returncode == 1
    assert 'bad:1' in result.stderr and 'digest mismatch' in result.stderr
    assert [e['RepoTags'] for e in member_json(out, 'manifest.json')] == [['good:1']]
    assert list(read_back(out)) == [ImageRef('good', '1')]
    assert leftovers(tmp_path, ['two.tar', 'out.tar']) == []


def test_destination_directory_must_exist(tmp_path):
    src = write_tar(tmp_path / 'ok.tar', legacy_members([(['ok:1'], [layer_tar(LAYERS[0])])]))
    result = occystrap('process', 'tar://%s' % src, 'tar://%s' % (tmp_path / 'missing' / 'out.tar'))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        'error: cannot write %s: directory %s does not exist' % (tmp_path / 'missing' / 'out.tar',
                                                                 tmp_path / 'missing')]
    result = occystrap('process', 'tar://%s' % src, 'tar://%s' % tmp_path)
    assert result.returncode == 1 and 'is a directory' in result.stderr


def test_existing_destination_is_replaced_atomically(tmp_path):
    src = write_tar(tmp_path / 'ok.tar', legacy_members([(['ok:1'], [layer_tar(LAYERS[0])])]))
    out = tmp_path / 'out.tar'
    out.write_bytes(b'old contents')
    os.chmod(out, 0o600)
    result = occystrap('process', 'tar://%s' % src, 'tar://%s' % out)
    assert result.returncode == 0, result.stderr
    assert member_json(out, 'manifest.json')[0]['RepoTags'] == ['ok:1']
    assert leftovers(tmp_path, ['ok.tar', 'out.tar']) == []


@pytest.mark.integration
def test_image_without_layers_is_a_valid_archive(tmp_path):
    # an image with no layers (FROM scratch + metadata only) is still a valid archive for skopeo
    ctx = RunContext()
    out = tmp_path / 'empty.tar'
    output = TarballOutput(parse_uri('tar://%s' % out, 'output'), ctx)
    output.write(Image(name='scratch', tag='1', config_bytes=image_config([]), layers=[]))
    output.finalize()
    ctx.close()
    assert member_json(out, 'manifest.json') == [{'Config': member_json(out, 'manifest.json')[0]['Config'],
                                                  'RepoTags': ['scratch:1'], 'Layers': []}]
    assert skopeo_inspect(f'docker-archive:{out}')['Layers'] in ([], None)


def test_patched_header_sizes_read_back_in_octal_and_base_256(tmp_path):
    # A member streamed into the tarball gets its size written afterwards; from 8 GiB up, in base-256.
    from occystrap.outputs.tarball import ustar_size_patched
    for size in (0, 1, 75_000_000, 8 ** 11 - 1, 9 * 1024 ** 3):
        info = tarfile.TarInfo('blobs/sha256/' + 'a' * 64)
        header = ustar_size_patched(info.tobuf(tarfile.USTAR_FORMAT), size)
        assert len(header) == tarfile.BLOCKSIZE
        assert tarfile.TarInfo.frombuf(header, 'utf-8', 'surrogateescape').size == size
    # GNU tar agrees, on an archive whose 9 GiB member is a hole in a sparse file.
    path = tmp_path / 'big.tar'
    size = 9 * 1024 ** 3
    with open(path, 'wb') as f:
        f.write(ustar_size_patched(tarfile.TarInfo('big').tobuf(tarfile.USTAR_FORMAT), size))
        f.truncate(tarfile.BLOCKSIZE + size + 2 * tarfile.BLOCKSIZE)
    listing = subprocess.run(['tar', '-tvf', str(path)], capture_output=True, text=True, check=True).stdout
    assert ' %d ' % size in listing and listing.rstrip().endswith(' big')
