"""Property-based tests of the tarball input: generated docker-save and OCI-layout tarballs, with generated (often
hostile) manifest.json, index.json, manifests, configs and member layouts, are opened, every layer is read and
applied; nothing outside the destination changes and every failure is an OccystrapError, never another exception.
"""

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from occystrap import extract
from occystrap.errors import CorruptImageError, OccystrapError
from occystrap.inputs.tarball import TarballInput
from occystrap.pipeline import RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.helpers import assert_contained, picture, sandbox

PROPERTY_SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def tar_of(members):
    """A tar of (name, kind, payload) in order: kind 'file' (bytes), 'symlink'/'hardlink' (target), 'dir'."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == 'file':
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {'symlink': tarfile.SYMTYPE, 'hardlink': tarfile.LNKTYPE, 'dir': tarfile.DIRTYPE}[kind]
            info.linkname = payload if kind != 'dir' else ''
            tar.addfile(info)
    return buf.getvalue()


# Layer contents: an ordinary one, and hostile ones (escapes, links out, whiteouts) the extractor must neutralise.
LAYERS = [
    tar_of([('etc', 'dir', None), ('etc/hello', 'file', b'hello\n')]),
    tar_of([('../escape', 'file', b'x'), ('out', 'symlink', '../../outside'), ('out/file', 'file', b'y'),
            ('/abs', 'file', b'z'), ('etc/.wh..wh..opq', 'file', b'')]),
    tar_of([('etc/.wh.hello', 'file', b''), ('h', 'hardlink', '../outside/file')]),
]

# JSON values that fit nowhere: what a hostile manifest puts where a string, list or object belongs.
JUNK = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 5, 2 ** 70, 1.5, float('nan'), '', 'nocolon', 'sha256:',
                     'sha256:../../x', 'sha512:' + 'a' * 64, 'md5:abc', '../../outside/file', '/etc/passwd',
                     'x\x1b[2J\n', [], [None], [5], ['a', 5], {}, {'digest': 5}, {'mediaType': []}]),
    st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=3)),
                 lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=2), inner,
                                                                                      max_size=2)),
                 max_leaves=4))
HOSTILE_NAMES = st.sampled_from(['../manifest.json', '/abs.json', 'missing.json', 'loop', 'chain1', 'blobs/sha256/..',
                                 'dir', 'x\x00y', 'a/../../../outside/file', ''])
# The fields a generated layout may get wrong; each example spoils at most two of them, so that most examples get
# far enough for the next field to matter.
DOCKER_FIELDS = ['manifest', 'entry', 'Config', 'RepoTags', 'RepoTag', 'Layers', 'Layer', 'LayerSources',
                 'config', 'rootfs', 'diff_ids', 'history', 'config.config']
OCI_FIELDS = ['index', 'manifests', 'descriptor', 'descriptor.mediaType', 'descriptor.digest', 'annotations',
              'ref.name', 'platform', 'manifest', 'manifest.config', 'config.digest', 'manifest.layers', 'layer',
              'layer.mediaType', 'layer.size', 'manifest.annotations', 'config', 'rootfs', 'diff_ids', 'history',
              'config.config']


def spoiler(draw, fields):
    """pick(field, good[, junk]): the good value, or junk for the (at most two) fields this example spoils."""
    spoiled = draw(st.sets(st.sampled_from(fields), max_size=2))

    def pick(field, good, junk=JUNK):
        return draw(junk) if field in spoiled else good
    return pick


def config_for(pick, layers):
    diff_ids = [sha256(layer) for layer in layers]
    history = [{'created_by': 'step %d' % i} for i in range(len(layers))]
    config = {'architecture': 'amd64', 'os': 'linux',
              'rootfs': pick('rootfs', {'type': 'layers', 'diff_ids': pick('diff_ids', diff_ids)}),
              'history': pick('history', history), 'config': pick('config.config', {'Env': ['A=1']})}
    return json.dumps(pick('config', config)).encode()


def link_members(draw):
    """Links and oddities among the members: loops, chains, escapes, duplicates, a directory in a file's place."""
    choices = [('loop', 'symlink', 'loop'), ('chain1', 'symlink', 'chain2'), ('chain2', 'symlink', 'chain1'),
               ('up', 'symlink', '../../outside/file'), ('abs', 'symlink', '/etc/passwd'),
               ('hard', 'hardlink', '../outside/file'), ('dir', 'dir', None), ('self', 'hardlink', 'self')]
    members = draw(st.lists(st.sampled_from(choices), max_size=4))
    if not draw(st.sampled_from([True] * 9 + [False])):     # a metadata member replaced by a link or a directory
        members.append(draw(st.sampled_from([('manifest.json', 'symlink', 'manifest.json'),
                                             ('index.json', 'dir', None), ('manifest.json', 'symlink', 'loop')])))
    return members


@st.composite
def docker_save(draw):
    layers = draw(st.lists(st.sampled_from(LAYERS), min_size=0, max_size=2))
    pick = spoiler(draw, DOCKER_FIELDS)
    config = config_for(pick, layers)
    config_name = sha256(config).split(':')[1] + '.json'
    layer_names = ['%d/layer.tar' % i for i in range(len(layers))]
    members = [(config_name, 'file', config)] + [(n, 'file', d) for n, d in zip(layer_names, layers)]
    if draw(st.booleans()):                   # skopeo's form: layer.tar symlinks to <diffid-hex>.tar
        members = [(config_name, 'file', config)]
        for name, data in zip(layer_names, layers):
            members.append((sha256(data).split(':')[1] + '.tar', 'file', data))
            members.append((name, 'symlink', '../' + sha256(data).split(':')[1] + '.tar'))
    tag = draw(st.sampled_from(['test/a:latest', 'x', 'a:b:c', 'test/a@sha256:00']))
    entry = {'Config': pick('Config', config_name, st.one_of(HOSTILE_NAMES, JUNK)),
             'RepoTags': pick('RepoTags', [pick('RepoTag', tag)]),
             'Layers': pick('Layers', [pick('Layer', n, st.one_of(HOSTILE_NAMES, JUNK)) for n in layer_names]),
             'LayerSources': pick('LayerSources', {})}
    manifest = pick('manifest', [pick('entry', entry)])
    members.append(('manifest.json', 'file', json.dumps(manifest).encode()))
    members += link_members(draw)
    if draw(st.booleans()):
        members.append(('manifest.json', 'file', json.dumps(manifest).encode()))   # a duplicate member
    return members


@st.composite
def oci_layout(draw):
    layers = draw(st.lists(st.sampled_from(LAYERS), min_size=0, max_size=2))
    pick = spoiler(draw, OCI_FIELDS)
    blobs = []
    descriptors = []
    for data in layers:
        gz = draw(st.booleans())
        blob = gzip.compress(data, mtime=0) if gz else data
        blobs.append(blob)
        media = 'application/vnd.oci.image.layer.v1.tar' + ('+gzip' if gz else '')
        descriptors.append(pick('layer', {'mediaType': pick('layer.mediaType', media), 'digest': sha256(blob),
                                          'size': pick('layer.size', len(blob))}))
    config = config_for(pick, layers)
    manifest = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                'config': pick('manifest.config', {'mediaType': 'application/vnd.oci.image.config.v1+json',
                                                   'digest': pick('config.digest', sha256(config)),
                                                   'size': len(config)}),
                'layers': pick('manifest.layers', descriptors),
                'annotations': pick('manifest.annotations', {'a': 'b'})}
    manifest_bytes = json.dumps(pick('manifest', manifest)).encode()
    descriptor = {'mediaType': pick('descriptor.mediaType', 'application/vnd.oci.image.manifest.v1+json'),
                  'digest': pick('descriptor.digest', sha256(manifest_bytes)), 'size': len(manifest_bytes),
                  'annotations': pick('annotations', {'org.opencontainers.image.ref.name': pick('ref.name', 'latest')}),
                  'platform': pick('platform', {'os': 'linux', 'architecture': 'amd64'})}
    descriptor = pick('descriptor', descriptor)
    entries = [descriptor]
    extra = []
    if draw(st.booleans()):                   # a nested index pointing at the manifest (or at itself)
        nested = json.dumps({'schemaVersion': 2, 'manifests': [descriptor]}).encode()
        entries = [{'mediaType': 'application/vnd.oci.image.index.v1+json', 'digest': sha256(nested),
                    'size': len(nested)}]
        extra.append(('blobs/sha256/' + sha256(nested).split(':')[1], 'file', nested))
    index = pick('index', {'schemaVersion': 2, 'manifests': pick('manifests', entries)})
    members = [('blobs/sha256/' + sha256(b).split(':')[1], 'file', b) for b in blobs + [config, manifest_bytes]]
    members += extra
    if draw(st.booleans()) or draw(st.booleans()):
        members.append(('oci-layout', 'file', b'{"imageLayoutVersion": "1.0.0"}'))
    members.append(('index.json', 'file', json.dumps(index).encode()))
    return members + link_members(draw)


def tarball_bytes(members, damage, where):
    data = tar_of(members)
    at = min(int(where * len(data)), len(data) - 1)
    if damage == 'cut':
        return data[:at]
    if damage == 'flip':
        return data[:at] + bytes([data[at] ^ 0xff]) + data[at + 1:]
    if damage == 'gzip':
        return gzip.compress(data, mtime=0)
    return data


def read_and_apply(path, dest):
    """What the commands do with a tarball source: list its images, open each, read and extract every layer."""
    ctx = RunContext(Settings(parallel=2))
    source = TarballInput(parse_uri('tar://%s' % path, 'input'), ctx)
    try:
        refs = source.references()
        for ref in refs:
            str(ref)
            try:
                image = source.open(ref)
                image.reference, image.config_digest, [layer.diffid for layer in image.layers]
                extract.apply_layers(ctx, image.layers, dest, what=str(ref))
            except OccystrapError:
                if len(refs) == 1:
                    raise
    finally:
        source.close()
        ctx.close()


def check_tarball(members, damage, where):
    with tempfile.TemporaryDirectory(prefix='tarball-prop-') as top:
        top = os.path.realpath(top)
        outside, dest, before, inodes = sandbox(top)
        path = os.path.join(os.path.dirname(dest), 'image.tar')
        with open(path, 'wb') as f:
            f.write(tarball_bytes(members, damage, where))
        before = picture(top, dest)
        try:
            read_and_apply(path, dest)
        except OccystrapError:
            pass                               # refusing the tarball is fine; any other exception fails the test
        assert picture(top, dest) == before
        assert_contained(dest, inodes)


DAMAGE = st.sampled_from(['none'] * 6 + ['cut', 'flip', 'gzip'])


@settings(max_examples=60, **PROPERTY_SETTINGS)
@given(members=docker_save(), damage=DAMAGE, where=st.floats(0, 1))
def test_generated_docker_save_tarballs(members, damage, where):
    check_tarball(members, damage, where)


@settings(max_examples=60, **PROPERTY_SETTINGS)
@given(members=oci_layout(), damage=DAMAGE, where=st.floats(0, 1))
def test_generated_oci_layout_tarballs(members, damage, where):
    check_tarball(members, damage, where)


# What the generated tarballs found, kept as concrete examples: JSON of the wrong type where the layout has a list,
# an object or a string gave TypeError, AttributeError or ValueError ("internal error") instead of one line.

def minimal_docker_save(entry_changes=None, config_changes=None):
    config = {'architecture': 'amd64', 'os': 'linux', 'rootfs': {'type': 'layers', 'diff_ids': [sha256(LAYERS[0])]},
              'history': [{'created_by': 'step'}]}
    config.update(config_changes or {})
    config_bytes = json.dumps(config).encode()
    name = sha256(config_bytes).split(':')[1] + '.json'
    entry = {'Config': name, 'RepoTags': ['test/a:latest'], 'Layers': ['0/layer.tar']}
    entry.update(entry_changes or {})
    return [(name, 'file', config_bytes), ('0/layer.tar', 'file', LAYERS[0]),
            ('manifest.json', 'file', json.dumps([entry]).encode())]


def minimal_oci_layout(descriptor_changes=None, manifest_changes=None):
    config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                         'rootfs': {'type': 'layers', 'diff_ids': [sha256(LAYERS[0])]}}).encode()
    manifest = {'schemaVersion': 2, 'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                                               'digest': sha256(config), 'size': len(config)},
                'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar', 'digest': sha256(LAYERS[0]),
                            'size': len(LAYERS[0])}]}
    manifest.update(manifest_changes or {})
    manifest_bytes = json.dumps(manifest).encode()
    descriptor = {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': sha256(manifest_bytes),
                  'size': len(manifest_bytes), 'annotations': {'org.opencontainers.image.ref.name': 'latest'}}
    descriptor.update(descriptor_changes or {})
    blobs = [config, manifest_bytes, LAYERS[0]]
    return ([('blobs/sha256/' + sha256(b).split(':')[1], 'file', b) for b in blobs]
            + [('oci-layout', 'file', b'{"imageLayoutVersion": "1.0.0"}'),
               ('index.json', 'file', json.dumps({'schemaVersion': 2, 'manifests': [descriptor]}).encode())])


def open_all(tmp_path, members):
    path = tmp_path / 'image.tar'
    path.write_bytes(tar_of(members))
    dest = tmp_path / 'dest'
    dest.mkdir()
    read_and_apply(str(path), str(dest))
    return dest


@pytest.mark.parametrize('members, message', [
    (minimal_docker_save({'RepoTags': True}), 'RepoTags that are not a list'),
    (minimal_docker_save({'RepoTags': 5}), 'RepoTags that are not a list'),
    (minimal_oci_layout({'annotations': True}), 'annotations that are not an object'),
    (minimal_oci_layout({'annotations': {'org.opencontainers.image.ref.name': 5}}), 'not an object of strings'),
    (minimal_oci_layout({'annotations': {'io.containerd.image.name': ['a']}}), 'not an object of strings'),
    (minimal_oci_layout(manifest_changes={'annotations': True}), 'annotations that are not an object'),
    (minimal_oci_layout(manifest_changes={'annotations': ['ab']}), 'annotations that are not an object'),
])
def test_layout_json_of_the_wrong_type_is_one_corrupt_image_error(tmp_path, members, message):
    with pytest.raises(CorruptImageError, match=message):
        open_all(tmp_path, members)


@pytest.mark.parametrize('history', [True, 5, {'created_by': 'x'}, [{'created_by': 5}], [{'created_by': ['x']}]])
def test_history_of_the_wrong_type_is_ignored(tmp_path, history):
    """History only labels layers for display, so a malformed one is dropped rather than failing the image."""
    dest = open_all(tmp_path, minimal_docker_save(config_changes={'history': history}))
    assert (dest / 'etc' / 'hello').read_bytes() == b'hello\n'
    ctx = RunContext(Settings())
    source = TarballInput(parse_uri('tar://%s' % (tmp_path / 'image.tar'), 'input'), ctx)
    try:
        image = source.open(source.references()[0])
        assert [layer.created_by for layer in image.layers] == [None]     # what info shows: nothing, not a crash
    finally:
        source.close()
        ctx.close()
