"""Real signals sent to a real `occystrap process` while transfers are in flight through a slow link.

The link (tools/delayproxy.py) is slow enough that a whole pull or push would take many seconds, so an exit within
the bound below shows the transfers were cancelled rather than waited for; nothing may be left behind, and a
cancelled push ends every upload session it opened with a DELETE.
"""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.services import build_oci_layout, seed_image
from tools.delayproxy import start_proxy_thread

pytestmark = pytest.mark.integration

LAYER = 4 * 1024 * 1024
BANDWIDTH_MBIT = 4            # 0.5 MB/s per connection: one 4 MiB layer takes some 8 s
EXIT_BOUND = 2.0              # generous: a run that waited for its transfers would take several times longer
EXPECTED = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


@pytest.fixture(scope='module')
def slow_image(tmp_path_factory):
    """Three layers of random (incompressible) data."""
    rand = random.Random(11)
    return build_oci_layout(tmp_path_factory.mktemp('slow') / 'layout', layers=[
        {'data/%d.bin' % i: rand.randbytes(LAYER)} for i in range(3)])


@pytest.fixture
def slow_link(registry):
    host, port, stop = start_proxy_thread(registry.host, latency_ms=10, bandwidth_mbit=BANDWIDTH_MBIT)
    try:
        yield '%s:%d' % (host, port)
    finally:
        stop()


def occystrap(*args, cwd=None):
    return subprocess.Popen([sys.executable, '-m', 'occystrap', '--insecure', *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def wait_for(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError('timed out waiting for %s' % what)


def stop_with(process, signum):
    """Send signum; returns (exit status, seconds to exit, stderr)."""
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError('occystrap did not exit within 30 s of %s' % signal.Signals(signum).name)
    return process.returncode, time.monotonic() - sent, stderr.decode()


def leftovers(directory):
    found = []
    for pattern in ('*.partial*', '.*.partial*', '.occystrap-tmp-*', '**/.occystrap-tmp-*'):
        found.extend(glob.glob(os.path.join(str(directory), pattern), recursive=True))
    return sorted(set(found))


def in_flight_bytes(directory):
    """Bytes already written to temporary files under directory (downloads have started)."""
    total = 0
    for root, _, files in os.walk(str(directory)):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=['SIGINT', 'SIGTERM', 'SIGHUP'])
@pytest.mark.parametrize('scheme', ['tar', 'dir'])
def test_signal_during_pull_exits_at_once_and_leaves_nothing(tmp_path, registry, slow_link, slow_image, repo_name,
                                                             signum, scheme):
    seed_image(registry, repo_name, 'v1', slow_image.path)
    out = tmp_path / 'out'
    out.mkdir()
    destination = '%s://%s' % (scheme, out / ('image.tar' if scheme == 'tar' else 'image'))
    process = occystrap('-j', '3', 'process', 'registry://%s/%s:v1' % (slow_link, repo_name), destination)
    try:
        wait_for(lambda: in_flight_bytes(out) > 64 * 1024 or process.poll() is not None, 'downloads to start')
        assert process.poll() is None, 'occystrap ended before it was signalled: %s' % process.stderr.read()
    except BaseException:
        process.kill()
        raise
    status, seconds, stderr = stop_with(process, signum)
    assert status == EXPECTED[signum], stderr
    assert seconds < EXIT_BOUND, 'took %.2f s to stop' % seconds
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ['error: interrupted (%s)' % signal.Signals(signum).name], stderr
    assert leftovers(out) == []
    # A pull into a new directory that was interrupted removes it; a tarball was never renamed into place.
    assert os.listdir(out) == []


def upload_sessions(registry, name):
    uploads = registry.storage_dir / 'docker' / 'registry' / 'v2' / 'repositories' / name / '_uploads'
    return sorted(os.listdir(uploads)) if uploads.exists() else []


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=['SIGINT', 'SIGTERM', 'SIGHUP'])
def test_signal_during_push_cancels_the_upload_sessions(tmp_path, registry, slow_link, slow_image, repo_name,
                                                        signum):
    # The source is a local docker-archive, so every byte that moves goes up through the slow link.
    archive = tmp_path / 'image.tar'
    subprocess.run(['skopeo', 'copy', '--quiet', 'oci:%s' % slow_image.path, 'docker-archive:%s' % archive],
                   check=True, capture_output=True)
    process = occystrap('-j', '3', 'process', 'tar://%s' % archive, 'registry://%s/%s:v1' % (slow_link, repo_name),
                        cwd=str(tmp_path))
    try:
        wait_for(lambda: len(upload_sessions(registry, repo_name)) >= 2 or process.poll() is not None,
                 'uploads to start')
        assert process.poll() is None, 'occystrap ended before it was signalled: %s' % process.stderr.read()
        time.sleep(0.3)   # bytes are moving through the slow link
    except BaseException:
        process.kill()
        raise
    status, seconds, stderr = stop_with(process, signum)
    assert status == EXPECTED[signum], stderr
    assert seconds < EXIT_BOUND, 'took %.2f s to stop' % seconds
    # Every session the run opened was ended with a DELETE. (docker-registry removes the session, but may write
    # its hash state back while the bytes the slow link still held arrive, so the log is what tells.)
    sessions = upload_sessions(registry, repo_name)
    assert sessions

    def deleted():
        return {entry.path.split('/')[-1].split('?')[0] for entry in registry.access_log() if entry.method == 'DELETE'}
    # The registry writes its access log line once it has answered: give a loaded machine a moment.
    wait_for(lambda: set(sessions) <= deleted(), 'a DELETE of every upload session %s' % sessions, timeout=10)
    # No manifest was written: the tag does not exist.
    with registry.client() as client:
        assert client.get('/v2/%s/manifests/v1' % repo_name).status_code == 404
    assert leftovers(tmp_path) == []
