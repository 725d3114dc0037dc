"""tar:// into things that are not a plain new file: FIFOs, pipes, standard output, symlinks, and what is refused.

A tarball streamed into a pipe must be byte for byte the one written to a regular file (where the output patches
headers in place and copies in the kernel): checked with sha256, and with `tar -tf`.
"""

import hashlib
import os
import random
import socket
import stat
import subprocess
import sys
import threading

import pytest

from tests.services import build_oci_layout, seed_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def layout(tmp_path_factory):
    rand = random.Random(5)
    return build_oci_layout(tmp_path_factory.mktemp('dest') / 'layout', layers=[
        {'etc/hello': b'hello\n'}, {'data/big.bin': rand.randbytes(600 * 1024)}, {'data/small': b'x' * 5000}])


@pytest.fixture
def source(registry, repo_name, layout):
    """A registry image with gzip layers, so a file destination streams its largest layer with a patched header."""
    seed_image(registry, repo_name, 'v1', layout.path)
    return 'registry://%s/%s:v1' % (registry.host, repo_name)


def occystrap(*args, **kwargs):
    kwargs.setdefault('capture_output', True)
    return subprocess.run([sys.executable, '-m', 'occystrap', '--insecure', *args], timeout=120, **kwargs)


def sha256_file(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def listing(data, tmp_path):
    path = tmp_path / 'listing.tar'
    path.write_bytes(data)
    return subprocess.run(['tar', '-tf', str(path)], check=True, capture_output=True, text=True).stdout.split()


@pytest.fixture
def reference(tmp_path, source):
    path = tmp_path / 'regular.tar'
    result = occystrap('process', source, 'tar://%s' % path)
    assert result.returncode == 0, result.stderr
    return path.read_bytes()


def test_fifo_gets_the_same_bytes_as_a_regular_file(tmp_path, source, reference):
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, 'rb').read()))
    reader.start()
    result = occystrap('process', source, 'tar://%s' % fifo)
    reader.join(60)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)          # still the FIFO, nothing renamed over it
    assert hashlib.sha256(received[0]).hexdigest() == hashlib.sha256(reference).hexdigest()
    assert 'manifest.json' in listing(received[0], tmp_path)
    assert not [n for n in os.listdir(tmp_path) if 'partial' in n or n.startswith('.occystrap-tmp-')]


@pytest.mark.parametrize('spelling', ['-', '/dev/stdout'])
def test_standard_output_through_a_pipe_gets_the_same_bytes(tmp_path, source, reference, spelling):
    result = occystrap('process', source, 'tar://%s' % spelling, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(reference).hexdigest()
    assert sorted(listing(result.stdout, tmp_path)) == sorted(listing(reference, tmp_path))
    assert os.path.islink('/dev/stdout')


def test_standard_output_on_a_terminal_is_refused(source):
    import pty
    master, slave = pty.openpty()
    try:
        result = occystrap('process', source, 'tar://-', stdout=slave, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        'error: cannot write tar://- : standard output is a terminal; redirect it or pipe it']


def test_symlink_destination_is_written_through_and_kept(tmp_path, source, reference):
    target_dir = tmp_path / 'real'
    target_dir.mkdir()
    target = target_dir / 'image.tar'
    target.write_bytes(b'old')
    link = tmp_path / 'link.tar'
    link.symlink_to(target)
    result = occystrap('process', source, 'tar://%s' % link)
    assert result.returncode == 0, result.stderr
    assert os.path.islink(link) and os.readlink(link) == str(target)
    assert sha256_file(target) == hashlib.sha256(reference).hexdigest()
    assert sorted(os.listdir(target_dir)) == ['image.tar']    # the temporary file was beside the target


def test_dangling_symlink_creates_its_target(tmp_path, source, reference):
    target = tmp_path / 'made.tar'
    link = tmp_path / 'link.tar'
    link.symlink_to(target)
    assert occystrap('process', source, 'tar://%s' % link).returncode == 0
    assert os.path.islink(link)
    assert sha256_file(target) == hashlib.sha256(reference).hexdigest()


def test_socket_and_block_device_are_never_replaced(tmp_path, source):
    sock_path = tmp_path / 'sock'
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        result = occystrap('process', source, 'tar://%s' % sock_path, text=True)
        assert result.returncode == 1
        assert result.stderr.splitlines() == ['error: cannot write %s: it is a socket, which tar:// never replaces'
                                              % sock_path]
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        server.close()
    if os.geteuid() != 0:
        pytest.skip('making a block device node needs root')
    device = tmp_path / 'blockdev'
    os.mknod(device, stat.S_IFBLK | 0o600, os.makedev(7, 250))
    result = occystrap('process', source, 'tar://%s' % device, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ['error: cannot write %s: it is a block device, which tar:// never replaces'
                                          % device]
    assert stat.S_ISBLK(os.lstat(device).st_mode)
    assert sorted(os.listdir(tmp_path)) == ['blockdev', 'sock']


def test_character_device_is_written_into(tmp_path, source):
    result = occystrap('process', source, 'tar:///dev/null', text=True)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(os.lstat('/dev/null').st_mode)
