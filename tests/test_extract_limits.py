"""Sizes: sparse members stay sparse, and --max-extract-bytes bounds what an extraction writes in a run."""

import hashlib
import os
import random
import subprocess
import sys

import pytest

from occystrap import extract
from tests.services import build_oci_layout

APPARENT = 256 * 1024 * 1024
PIECES = [(0, b'start' * 100), (100 * 1024 * 1024, b'middle' * 1000), (APPARENT - 4096, b'e' * 4096)]


def sparse_tar(tmp_path, fmt):
    """A tar (GNU tar --sparse) holding a 256 MiB file that is mostly holes."""
    work = tmp_path / ('src-' + fmt)
    work.mkdir()
    path = work / 'sparse.bin'
    with open(path, 'wb') as f:
        f.truncate(APPARENT)
        for offset, data in PIECES:
            f.seek(offset)
            f.write(data)
    out = tmp_path / ('sparse-%s.tar' % fmt)
    subprocess.run(['tar', '--sparse', '--format=%s' % fmt, '-C', str(work), '-cf', str(out), 'sparse.bin'],
                   check=True)
    assert os.path.getsize(out) < 1024 * 1024
    return out


@pytest.mark.parametrize('fmt', ['gnu', 'posix'])
def test_sparse_member_is_written_with_holes(tmp_path, fmt):
    tarball = sparse_tar(tmp_path, fmt)
    root = tmp_path / 'root'
    root.mkdir()
    budget = extract.ExtractBudget(max_bytes=1024 * 1024)
    with open(tarball, 'rb') as stream:
        extract.extract_layer(stream, str(root), budget=budget)
    path = root / 'sparse.bin'
    st = os.stat(path)
    assert st.st_size == APPARENT
    assert st.st_blocks * 512 < 2 * 1024 * 1024, 'the holes were written out: %d bytes on disk' % (st.st_blocks * 512)
    with open(path, 'rb') as f:
        for offset, data in PIECES:
            f.seek(offset)
            assert f.read(len(data)) == data
        f.seek(50 * 1024 * 1024)
        assert f.read(4096) == b'\0' * 4096
    assert budget.written < 64 * 1024          # data pieces counted, holes not
    # GNU tar's own extraction of the same tar gives the same content.
    check = tmp_path / 'check'
    check.mkdir()
    subprocess.run(['tar', '-C', str(check), '-xf', str(tarball)], check=True)
    assert sha256(check / 'sparse.bin') == sha256(path)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def test_budget_is_shared_by_the_layers_of_a_run(tmp_path):
    import io
    import tarfile
    budget = extract.ExtractBudget(max_bytes=10000)

    def layer(name, size):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode='w') as tar:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b'z' * size))
        buffer.seek(0)
        return buffer

    root = tmp_path / 'root'
    root.mkdir()
    extract.extract_layer(layer('a', 6000), str(root), budget=budget)
    with pytest.raises(extract.ExtractLimitError, match='10000 bytes --max-extract-bytes'):
        extract.extract_layer(layer('b', 6000), str(root), budget=budget)
    assert not (root / 'b').exists()
    assert budget.written == 6000


@pytest.fixture(scope='module')
def big_archive(tmp_path_factory):
    """A docker-archive whose one file is 2 MiB (random data: a 2 MB layer that extracts to 2 MiB)."""
    base = tmp_path_factory.mktemp('limits')
    layout = build_oci_layout(base / 'layout', layers=[{'etc/hello': b'hello\n'},
                                                       {'data/big.bin': random.Random(9).randbytes(2 << 20)}])
    path = base / 'image.tar'
    subprocess.run(['skopeo', 'copy', '--quiet', 'oci:%s' % layout.path, 'docker-archive:%s:limits/big:v1' % path],
                   check=True, capture_output=True)
    return path


def occystrap(*args, env=None):
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize('scheme,query', [('dir', '?expand=true'), ('oci', ''), ('mounts', '')])
def test_extraction_over_the_limit_fails_with_one_line_and_leaves_nothing(tmp_path, big_archive, scheme, query):
    out = tmp_path / 'out'
    out.mkdir()
    destination = out / 'image'
    result = occystrap('--max-extract-bytes', '1M', 'process', 'tar://%s' % big_archive,
                       '%s://%s%s' % (scheme, destination, query))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and '1048576 bytes --max-extract-bytes' in lines[0], \
        result.stderr
    assert os.listdir(out) == []


def test_limit_from_the_environment_and_a_limit_that_fits(tmp_path, big_archive):
    env = dict(os.environ, OCCYSTRAP_MAX_EXTRACT_BYTES='1536K')
    result = occystrap('process', 'tar://%s' % big_archive, 'oci://%s' % (tmp_path / 'small'), env=env)
    assert result.returncode == 1 and '1572864 bytes' in result.stderr
    assert not (tmp_path / 'small').exists()
    env['OCCYSTRAP_MAX_EXTRACT_BYTES'] = '3m'
    result = occystrap('process', 'tar://%s' % big_archive, 'oci://%s' % (tmp_path / 'fits'), env=env)
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(tmp_path / 'fits' / 'rootfs' / 'data' / 'big.bin') == 2 << 20


@pytest.mark.parametrize('value', ['0', '-5', '1.5G', 'ten', '10X', ''])
def test_bad_limits_are_usage_errors(value):
    result = occystrap('--max-extract-bytes', value, 'info', 'tar:///nonexistent.tar')
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: Invalid value for '--max-extract-bytes': must be a positive size in bytes, with an optional K, M, G "
        "or T suffix, not %r" % value]


def test_bad_limit_from_the_environment_names_the_variable():
    result = occystrap('info', 'tar:///nonexistent.tar', env=dict(os.environ, OCCYSTRAP_MAX_EXTRACT_BYTES='nan'))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: OCCYSTRAP_MAX_EXTRACT_BYTES=nan: --max-extract-bytes must be a positive size in bytes, with an "
        "optional K, M, G or T suffix, not 'nan'"]
