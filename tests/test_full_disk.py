"""A real full filesystem (a 1 MiB tmpfs the test mounts, so root only) under every file output, and failed runs.

Each run must fail with one line naming the destination and the reason, exit 1, and leave the filesystem as it was.
"""

import json
import os
import random
import subprocess
import sys

import pytest

from tests.services import build_oci_layout

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def archive(tmp_path_factory):
    """A docker-archive whose layers (3 MiB of random data in all) cannot fit in 1 MiB."""
    base = tmp_path_factory.mktemp('full-disk')
    rand = random.Random(3)
    layout = build_oci_layout(base / 'layout', layers=[{'etc/hello': b'hello\n'},
                                                       {'data/a.bin': rand.randbytes(1536 * 1024)},
                                                       {'data/b.bin': rand.randbytes(1536 * 1024)}])
    path = base / 'image.tar'
    subprocess.run(['skopeo', 'copy', '--quiet', 'oci:%s' % layout.path, 'docker-archive:%s:full/disk:v1' % path],
                   check=True, capture_output=True)
    return path


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('mounting a 1 MiB tmpfs needs root; run as root to test full filesystems')
    mountpoint = tmp_path / 'small'
    mountpoint.mkdir()
    result = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mountpoint)],
                            capture_output=True, text=True)
    assert result.returncode == 0, 'cannot mount a tmpfs as root: %s' % result.stderr
    try:
        yield mountpoint
    finally:
        subprocess.run(['umount', '-l', str(mountpoint)], check=True)


def occystrap(*args):
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize('scheme,name,query', [('tar', 'out.tar', ''), ('dir', 'out', ''),
                                               ('dir', 'out', '?expand=true'), ('oci', 'bundle', ''),
                                               ('mounts', 'layers', '')])
def test_full_filesystem_is_one_line_naming_the_destination_and_leaves_nothing(small_fs, archive, scheme, name,
                                                                               query):
    destination = small_fs / name
    result = occystrap('process', 'tar://%s' % archive, '%s://%s%s' % (scheme, destination, query))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == ['error: cannot write %s: No space left on device' % destination]
    assert os.listdir(small_fs) == []


def test_failed_run_into_a_new_directory_removes_it(tmp_path, archive):
    # A layer that lies about its digest: the run fails after other layers were already placed.
    broken = tmp_path / 'broken.tar'
    data = archive.read_bytes()
    marker = b'data/b.bin'
    at = data.index(marker) + 4096
    broken.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    destination = tmp_path / 'new' / 'deeper'
    result = occystrap('process', 'tar://%s' % broken, 'dir://%s' % destination)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / 'new').exists()


def test_failed_run_into_a_unique_names_directory_adds_nothing_the_catalog_does_not_name(tmp_path, archive):
    destination = tmp_path / 'shared'
    first = build_oci_layout(tmp_path / 'first', layers=[{'etc/hello': b'hello\n'}])
    first_archive = tmp_path / 'first.tar'
    subprocess.run(['skopeo', 'copy', '--quiet', 'oci:%s' % first.path, 'docker-archive:%s:first/one:v1'
                    % first_archive], check=True, capture_output=True)
    assert occystrap('process', 'tar://%s' % first_archive, 'dir://%s?unique_names=true' % destination).returncode == 0
    before = sorted(os.listdir(destination))
    broken = tmp_path / 'broken.tar'
    data = archive.read_bytes()
    at = data.index(b'data/b.bin') + 4096
    broken.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    result = occystrap('-j', '1', 'process', 'tar://%s' % broken, 'dir://%s?unique_names=true' % destination)
    assert result.returncode == 1
    assert sorted(os.listdir(destination)) == before
    catalog = json.loads((destination / 'catalog.json').read_text())
    assert list(catalog) == ['docker.io/first/one:v1']
