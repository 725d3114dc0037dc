"""Tests for tools/imagegen.py: deterministic images that skopeo accepts and that look like real ones."""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import tree_digests  # noqa: E402
from tools import imagegen  # noqa: E402

SCALE = 0.01


@pytest.fixture(scope='module')
def app_image(tmp_path_factory):
    """The app model at a tiny scale, generated once for the tests that only read it."""
    [info] = imagegen.generate('app', str(tmp_path_factory.mktemp('imagegen') / 'app'), scale=SCALE, tag='v1')
    return info


def _skopeo_inspect(ref):
    result = subprocess.run(['skopeo', 'inspect', ref], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f'skopeo inspect {ref} failed: {result.stderr}'
    return json.loads(result.stdout)


def _layer_members(blob_path):
    with tarfile.open(blob_path, 'r:gz') as tar:
        return {member.name: member for member in tar.getmembers()}


def test_same_seed_gives_byte_identical_layouts(tmp_path):
    first = imagegen.generate('app', str(tmp_path / 'a'), seed=7, scale=SCALE / 2)
    second = imagegen.generate('app', str(tmp_path / 'b'), seed=7, scale=SCALE / 2)
    other = imagegen.generate('base', str(tmp_path / 'c'), seed=8, scale=SCALE / 2)

    assert tree_digests(tmp_path / 'a') == tree_digests(tmp_path / 'b')
    assert first[0].manifest_digest == second[0].manifest_digest
    assert other[0].layers[0].digest != first[0].layers[0].digest
    assert sorted(os.listdir(tmp_path)) == ['a', 'b', 'c']


def test_skopeo_reads_generated_app_layout(app_image):
    info = app_image

    inspected = _skopeo_inspect(f'oci:{info.path}:v1')

    assert len(inspected['Layers']) == len(info.layers) == 24
    assert inspected['Digest'] == info.manifest_digest
    assert (inspected['Architecture'], inspected['Os']) == ('amd64', 'linux')
    assert 'PYTHONUNBUFFERED=1' in inspected['Env']


def test_config_matches_layers_and_history(app_image):
    layout = Path(app_image.path)
    blobs = layout / 'blobs' / 'sha256'
    index = json.loads((layout / 'index.json').read_text())
    assert index['manifests'][0]['annotations']['org.opencontainers.image.ref.name'] == 'v1'
    manifest = json.loads((blobs / index['manifests'][0]['digest'][7:]).read_bytes())
    config = json.loads((blobs / manifest['config']['digest'][7:]).read_bytes())

    for layer, diffid in zip(manifest['layers'], config['rootfs']['diff_ids']):
        blob = (blobs / layer['digest'][7:]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == layer['digest'][7:]
        assert len(blob) == layer['size']
        assert 'sha256:' + hashlib.sha256(gzip.decompress(blob)).hexdigest() == diffid
    layer_history = [h for h in config['history'] if not h.get('empty_layer')]
    assert len(layer_history) == len(manifest['layers'])
    assert any(h.get('empty_layer') for h in config['history'])
    assert all(h['created_by'] for h in config['history'])
    assert config['config']['User'] == 'app'


def test_base_layer_looks_like_an_os_and_compresses_like_one(tmp_path):
    [info] = imagegen.generate('base', str(tmp_path / 'base'), scale=0.05)
    [layer] = info.layers

    ratio = layer.uncompressed_size / layer.size
    assert 2.2 < ratio < 3.4, ratio
    members = _layer_members(layer.path)
    files = [m for m in members.values() if m.isfile()]
    assert len(files) > 300
    assert members['bin'].issym() and members['bin'].linkname == 'usr/bin'
    assert members['usr/bin/perl5.38.2'].islnk()
    assert members['tmp'].isdir() and members['tmp'].mode == 0o1777
    assert {m.mtime for m in members.values()} == {imagegen.EPOCH}
    assert max(m.size for m in files) > 20 * min(m.size for m in files if m.size)


def test_app_prunes_lower_layers_with_whiteouts(app_image, tmp_path):
    app = app_image
    [base] = imagegen.generate('base', str(tmp_path / 'base'), scale=SCALE)

    assert app.layers[0].digest == base.layers[0].digest
    whiteouts = {name for layer in app.layers for name in _layer_members(layer.path) if '.wh.' in name}
    assert {'app/.wh.node_modules', 'app/.wh.frontend', 'var/cache/debconf/.wh.templates.dat-old',
            'var/lib/apt/lists/.wh..wh..opq'} <= whiteouts
    sizes = sorted(layer.uncompressed_size for layer in app.layers)
    assert sizes[-1] > 50 * sizes[0]


def test_fleet_cli_writes_named_layouts_sharing_the_base(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'imagegen.py'), 'fleet', str(tmp_path / 'fleet'),
                             '--count', '4', '--scale', str(SCALE)], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert names == ['fleet-00-api', 'fleet-01-worker', 'fleet-02-web', 'fleet-03-scheduler']
    inspected = {name: _skopeo_inspect(f'oci:{tmp_path / "fleet" / name}:latest') for name in names}
    bases = {data['Layers'][0] for data in inspected.values()}
    assert len(bases) == 1
    assert all(3 <= len(data['Layers']) <= 6 for data in inspected.values())
    # Two of every three images also share the Python runtime layer.
    assert inspected['fleet-00-api']['Layers'][1] == inspected['fleet-01-worker']['Layers'][1]
    assert inspected['fleet-02-web']['Layers'][1] != inspected['fleet-00-api']['Layers'][1]


def test_docker_archive_is_a_legacy_docker_save_tarball(tmp_path):
    path = tmp_path / 'base.tar'
    [info] = imagegen.generate('base', str(path), scale=SCALE, fmt='docker-archive', tag='v2')

    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile('manifest.json'))
        [entry] = manifest
        config = json.load(tar.extractfile(entry['Config']))
        layer = tar.extractfile(entry['Layers'][0]).read()
        repositories = json.load(tar.extractfile('repositories'))
    assert entry['RepoTags'] == ['base:v2']
    assert config['rootfs']['diff_ids'] == ['sha256:' + hashlib.sha256(layer).hexdigest()]
    assert repositories == {'base': {'v2': entry['Layers'][0].split('/')[0]}}
    assert tarfile.open(fileobj=io.BytesIO(layer)).getmember('etc/passwd').isfile()
    inspected = _skopeo_inspect(f'docker-archive:{path}')
    assert len(inspected['Layers']) == 1
    assert info.config_digest == 'sha256:' + entry['Config'].split('.')[0]


def test_zlib_and_isal_give_the_same_diffids(tmp_path):
    if imagegen.isal_zlib is None:
        pytest.fail('isal is a project dependency and should be importable')
    [isal] = imagegen.generate('base', str(tmp_path / 'i'), scale=SCALE, compressor='isal')
    [plain] = imagegen.generate('base', str(tmp_path / 'z'), scale=SCALE, compressor='zlib')

    assert isal.layers[0].diffid == plain.layers[0].diffid
    assert isal.layers[0].digest != plain.layers[0].digest
