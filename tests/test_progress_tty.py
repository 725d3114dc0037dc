"""The progress display in a real terminal (tmux), in a pipe, and with --quiet and --progress.

`occystrap process` pulls two images from a real docker-registry through tools/delayproxy.py with a bandwidth cap,
so the run lasts a few seconds; `tmux capture-pane -p` reads the screen while it runs and after it exits.
"""

import os
import random
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.services import build_oci_layout, seed_image
from tools.delayproxy import start_proxy_thread

pytestmark = pytest.mark.integration

LAYER = 3 * 1024 * 1024
BANDWIDTH_MBIT = 8            # 1 MB/s per connection: each image's 3 MiB layer takes some 3 s
COLUMNS, ROWS = 100, 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def slow_images(tmp_path_factory):
    """Two images of one small layer and one 3 MiB layer of random (incompressible) data, sharing no blob."""
    return [build_oci_layout(tmp_path_factory.mktemp('slow') / 'layout', layers=[
        {'etc/small': b'small %d\n' % seed}, {'data/big.bin': random.Random(seed).randbytes(LAYER)}])
        for seed in (13, 14)]


@pytest.fixture
def two_images(registry, repo_name, slow_images):
    for suffix, image in zip('ab', slow_images):
        seed_image(registry, '%s-%s' % (repo_name, suffix), 'v1', image.path)
    return repo_name


@pytest.fixture
def slow_link(registry):
    host, port, stop = start_proxy_thread(registry.host, latency_ms=5, bandwidth_mbit=BANDWIDTH_MBIT)
    try:
        yield '%s:%d' % (host, port)
    finally:
        stop()


def command(link, repo, dest, *options):
    return [sys.executable, '-m', 'occystrap', '--insecure', '-J', '2', *options, 'process',
            'registry://%s/%s-*:v1' % (link, repo), 'dir://%s' % dest]


def clean_env():
    """The environment without proxy variables (the proxy tests' rule) and without our own settings."""
    return {k: v for k, v in os.environ.items()
            if 'proxy' not in k.lower() and not k.startswith('OCCYSTRAP_')}


class Tmux:
    """A tmux server of our own (its own socket) running one command in a pane of a fixed size."""

    def __init__(self, tmp_path):
        if shutil.which('tmux') is None:
            raise AssertionError('tmux is not installed (tools/bootstrap.sh installs it)')
        self.socket = str(tmp_path / 'tmux.sock')
        self.conf = tmp_path / 'tmux.conf'
        self.conf.write_text('set -g status off\n')
        self.status = tmp_path / 'status'       # the command's exit status, written once it has exited

    def tmux(self, *args):
        return subprocess.run(['tmux', '-S', self.socket, '-f', str(self.conf), *args], check=True,
                              capture_output=True, text=True, timeout=30).stdout

    def start(self, argv):
        env = clean_env()
        env['TERM'] = 'xterm'
        script = ' '.join("'%s'" % a.replace("'", "'\\''") for a in argv)
        exports = ' '.join("%s='%s'" % (k, v.replace("'", "'\\''")) for k, v in env.items()
                           if k.replace('_', '').isalnum())
        # The shell stays (silently) after the command so the screen can be read as the command left it.
        self.tmux('new-session', '-d', '-s', 'run', '-x', str(COLUMNS), '-y', str(ROWS), '-c', ROOT,
                  'env -i %s %s; echo $? > %s; exec sleep 600' % (exports, script, self.status))

    def screen(self):
        """The pane's non-empty lines."""
        return [line for line in self.tmux('capture-pane', '-p', '-t', 'run').splitlines() if line.strip()]

    def watch(self, timeout=120):
        """Screens seen until the command exits; returns (screens, final screen, exit status)."""
        screens = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status.read_text().strip() if self.status.exists() else ''
            if status:
                return screens, self.screen(), int(status)
            screens.append(self.screen())
            time.sleep(0.1)
        raise AssertionError('occystrap did not finish within %d s in tmux' % timeout)

    def close(self):
        subprocess.run(['tmux', '-S', self.socket, 'kill-server'], capture_output=True, timeout=30)


@pytest.fixture
def tmux(tmp_path):
    terminal = Tmux(tmp_path)
    try:
        yield terminal
    finally:
        terminal.close()


def test_terminal_shows_a_line_per_image_and_an_overall_line_then_only_the_summary(
        tmux, slow_link, two_images, tmp_path):
    tmux.start(command(slow_link, two_images, tmp_path / 'out'))
    screens, final, status = tmux.watch()
    assert status == 0, final
    drawn = [s for s in screens if any(line.startswith('total: ') for line in s)]
    assert drawn, 'no progress was drawn during the run; screens: %r' % screens[-5:]
    for screen in screens:
        assert len(screen) <= 2 + 1, 'more lines than images + 1 while running: %r' % screen
        assert all(len(line) < COLUMNS for line in screen), 'a line filled the width (it would wrap): %r' % screen
    names = ['%s-%s:v1' % (two_images, suffix) for suffix in 'ab']
    # The names are longer than the room beside the figures: they lose their start, marked by '~'.
    per_image = [line for s in drawn for line in s
                 if line.startswith('~') and any(name.endswith(line.split()[0][1:]) for name in names)]
    assert per_image, 'no per-image line in %r' % drawn[-3:]
    moving = re.compile(r'  [0-2]/2 layers  [0-9.]+ [KM]?B/[0-9.]+ MB  [0-9.]+ [KM]?B/s  ETA [0-9]+:[0-9]{2}$')
    assert any(moving.search(line) for line in per_image), per_image[-3:]
    assert any(s[-1].startswith('total: ') and '/2 images' in s[-1] for s in drawn)
    assert len(final) == 3, 'after exit only the summary remains: %r' % final
    assert final[0].startswith(two_images + '-a:v1') and final[0].endswith('ok')
    assert final[1].startswith(two_images + '-b:v1') and final[1].endswith('ok')
    assert final[2].startswith('done: 2 images, 4 layers,') and ' uploaded in ' in final[2]
    assert not any('total: ' in line for line in final)


def test_quiet_terminal_shows_nothing_but_errors(tmux, slow_link, two_images, tmp_path):
    tmux.start(command(slow_link, two_images, tmp_path / 'out', '--quiet'))
    screens, final, status = tmux.watch()
    assert status == 0, final
    assert all(screen == [] for screen in screens), [s for s in screens if s][:3]
    assert final == []


def test_quiet_still_prints_errors(slow_link):
    result = subprocess.run([sys.executable, '-m', 'occystrap', '--insecure', '--quiet', 'process',
                             'registry://%s/no/such-image:v1' % slow_link, 'tar:///dev/null'],
                            capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith('error: ') and len(result.stderr.splitlines()) == 1, result.stderr


def test_nothing_is_drawn_in_a_pipe(slow_link, two_images, tmp_path):
    result = subprocess.run(command(slow_link, two_images, tmp_path / 'out'), capture_output=True, text=True,
                            env=clean_env(), cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '\x1b' not in result.stderr and 'total: ' not in result.stderr
    assert result.stderr.splitlines()[-1].startswith('done: 2 images, 4 layers,')


def test_progress_draws_even_in_a_pipe(slow_link, two_images, tmp_path):
    result = subprocess.run(command(slow_link, two_images, tmp_path / 'out', '--progress'), capture_output=True,
                            text=True, env=clean_env(), cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '\x1b[2Ktotal: ' in result.stderr
    assert '\x1b[J' in result.stderr, 'the display is cleared before the summary'
    assert result.stderr.splitlines()[-1].startswith('done: 2 images, 4 layers,')


def test_quiet_and_progress_together_is_a_usage_error():
    result = subprocess.run([sys.executable, '-m', 'occystrap', '--quiet', '--progress', 'info', 'tar:///nope.tar'],
                            capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr == 'error: --quiet and --progress contradict each other; give one\n'
