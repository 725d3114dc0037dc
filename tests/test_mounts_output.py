"""mounts:// output: layers side by side, overlayfs whiteouts, and a mount.sh whose overlay equals the image."""

import json
import os
import stat
import subprocess
import sys

import pytest

from occystrap import extract
from occystrap.errors import OccystrapError
from occystrap.outputs.mounts import MountsOutput
from occystrap.pipeline import RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.services import build_oci_layout
from tests.helpers import WHITEOUT_LAYERS, image_from_layout, snapshot, umoci_rootfs


def write_mounts(dest, images):
    ctx = RunContext(Settings(parallel=3))
    try:
        out = MountsOutput(parse_uri('mounts://%s' % dest, 'output'), ctx)
        try:
            for image in images:
                out.write(image)
        except BaseException:
            out.abort()
            raise
        out.finalize()
        return ctx
    finally:
        ctx.close()


@pytest.fixture
def layout(tmp_path):
    return build_oci_layout(tmp_path / 'layout', WHITEOUT_LAYERS)


def test_each_layer_in_its_own_directory_with_overlay_whiteouts(layout, tmp_path):
    dest = tmp_path / 'mounts'
    write_mounts(dest, [image_from_layout(layout)])
    names = ['%03d-%s' % (i, d.split(':')[1]) for i, d in enumerate(layout.diff_ids)]
    assert sorted(os.listdir(dest / 'layers')) == sorted(names + ['empty'])
    assert sorted(os.listdir(dest)) == ['config.json', 'layers', 'lowerdir', 'manifest.json', 'mount.sh']
    first, second, third = (dest / 'layers' / n for n in names)
    assert (first / 'etc' / 'a').read_bytes() == b'a\n'                      # lower layers are untouched
    assert sorted(os.listdir(second)) == ['abs', 'etc', 'opt', 'var']         # only what layer 1 has
    whiteout = os.lstat(second / 'etc' / 'a')
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(second / 'opt', 'trusted.overlay.opaque') == b'y'
    assert stat.S_ISCHR(os.lstat(third / 'lnk').st_mode)
    assert not [p for p in snapshot(dest / 'layers') if os.path.basename(p).startswith('.wh.')]
    lower = ['layers/' + n for n in reversed(names)] + ['layers/empty']
    assert (dest / 'lowerdir').read_text() == ':'.join(lower) + '\n'
    manifest = json.loads((dest / 'manifest.json').read_text())
    assert manifest['whiteouts'] == 'overlay'
    assert manifest['layers'] == [{'diffid': d, 'path': 'layers/' + n} for d, n in zip(layout.diff_ids, names)]
    assert (dest / 'config.json').read_bytes() == (layout.path / 'blobs' / 'sha256' /
                                                   layout.config_digest.split(':')[1]).read_bytes()
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700


def test_mount_script_passes_shellcheck(layout, tmp_path):
    dest = tmp_path / 'mounts'
    write_mounts(dest, [image_from_layout(layout)])
    result = subprocess.run(['shellcheck', str(dest / 'mount.sh')], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_overlay_mount_equals_the_image_rootfs(layout, tmp_path):
    dest = tmp_path / 'mounts'
    write_mounts(dest, [image_from_layout(layout)])
    moved = tmp_path / 'moved'
    os.rename(dest, moved)                                   # mount.sh finds its layers wherever PATH goes
    target, upper, work = (tmp_path / n for n in ('merged', 'upper', 'work'))
    for d in (target, upper, work):
        d.mkdir()
    expected = snapshot(umoci_rootfs(layout, tmp_path))
    result = subprocess.run([str(moved / 'mount.sh'), str(target)], capture_output=True, text=True)
    assert result.returncode == 0, 'overlay mount failed: %s' % result.stderr
    try:
        assert snapshot(target) == expected
    finally:
        subprocess.run(['umount', str(target)], check=True)
    result = subprocess.run([str(moved / 'mount.sh'), str(target), str(upper), str(work)], capture_output=True,
                            text=True)
    assert result.returncode == 0, 'overlay mount failed: %s' % result.stderr
    try:
        assert snapshot(target) == expected
        (target / 'written').write_text('goes to upper')
    finally:
        subprocess.run(['umount', str(target)], check=True)
    assert (upper / 'written').read_text() == 'goes to upper'


def test_single_layer_image_mounts_read_only(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', [{'only': b'one\n'}])
    dest = tmp_path / 'mounts'
    write_mounts(dest, [image_from_layout(oci)])
    target = tmp_path / 'merged'
    target.mkdir()
    result = subprocess.run([str(dest / 'mount.sh'), str(target)], capture_output=True, text=True)
    assert result.returncode == 0, 'overlay mount failed: %s' % result.stderr
    try:
        assert (target / 'only').read_bytes() == b'one\n'
        with pytest.raises(OSError):
            (target / 'new').write_text('x')
    finally:
        subprocess.run(['umount', str(target)], check=True)


def test_without_root_whiteouts_stay_oci_files(layout, tmp_path, monkeypatch):
    monkeypatch.setattr(extract, 'is_root', lambda: False)
    dest = tmp_path / 'mounts'
    ctx = write_mounts(dest, [image_from_layout(layout)])
    second = dest / 'layers' / ('001-%s' % layout.diff_ids[1].split(':')[1])
    assert (second / 'etc' / '.wh.a').is_file()
    assert (second / 'opt' / '.wh..wh..opq').is_file()
    assert json.loads((dest / 'manifest.json').read_text())['whiteouts'] == 'oci'
    assert any('whiteouts stay as .wh. files' in w for w in ctx.warnings)


def test_one_image_only_and_nothing_left_on_failure(layout, tmp_path):
    dest = tmp_path / 'mounts'
    image = image_from_layout(layout)
    with pytest.raises(OccystrapError, match='holds one image'):
        write_mounts(dest, [image, image_from_layout(layout, name='other/image')])
    assert not dest.exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith('.')] == []


def test_cli_tarball_to_mounts(layout, tmp_path):
    archive = tmp_path / 'image.tar'
    subprocess.run(['tar', '-C', str(layout.path), '-cf', str(archive), '.'], check=True)
    dest = tmp_path / 'mounts'
    result = subprocess.run([sys.executable, '-m', 'occystrap', 'process', 'tar://%s' % archive,
                             'mounts://%s' % dest], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((dest / 'manifest.json').read_text())
    assert [layer['diffid'] for layer in manifest['layers']] == layout.diff_ids
