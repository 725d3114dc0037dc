"""A real ``podman system service`` on a Unix socket, with storage isolated in a work directory."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tools.testbed.process import STARTUP_TIMEOUT, ServiceError, stop_process

PODMAN_BINARY = shutil.which('podman') or '/usr/bin/podman'


class Podman:
    """A real ``podman system service`` on a Unix socket, with storage isolated under ``workdir``.

    vfs storage, cgroupfs and file events make it work as root in a container without systemd. ``podman(*args)``
    runs the CLI against the same storage, so a test can check what the API loaded.
    """

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Podman refuses a runroot longer than 50 characters and sockets are limited to 108, and pytest's
        # temporary paths can be longer than either: keep run state and the socket in a short directory.
        self.run_dir = Path(tempfile.mkdtemp(prefix='podman-', dir='/tmp'))
        self.socket_path = self.run_dir / 'api.sock'
        self.log_path = self.workdir / 'podman.log'
        self._process = None

    @property
    def url(self):
        """``unix://`` URI of the API socket."""
        return f'unix://{self.socket_path}'

    @property
    def log(self):
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def _global_args(self):
        return ['--root', str(self.workdir / 'root'), '--runroot', str(self.run_dir / 'runroot'),
                '--tmpdir', str(self.run_dir / 'libpod'), '--storage-driver', 'vfs',
                '--cgroup-manager', 'cgroupfs', '--events-backend', 'file',
                '--network-config-dir', str(self.workdir / 'networks')]

    def _env(self):
        # Image pulls and loads stage their data under TMPDIR; keep it inside the work directory.
        tmp = self.workdir / 'tmp'
        tmp.mkdir(exist_ok=True)
        return dict(os.environ, TMPDIR=str(tmp))

    def client(self, **kwargs):
        """An ``httpx.Client`` talking to the API socket (base URL ``http://podman``)."""
        import httpx
        kwargs.setdefault('base_url', 'http://podman')
        kwargs.setdefault('timeout', 60.0)
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket_path)), **kwargs)

    def start(self):
        """Start the service and wait until ``GET /_ping`` answers ``OK``; returns self. Raises ``ServiceError``."""
        import httpx
        self.run_dir.mkdir(exist_ok=True)
        with open(self.log_path, 'wb') as log:
            self._process = subprocess.Popen(
                [PODMAN_BINARY, *self._global_args(), 'system', 'service', '--time=0', self.url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env())
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with self.client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    message = f'podman system service exited with {self._process.returncode}; log:\n{self.log}'
                    self.stop()
                    raise ServiceError(message)
                try:
                    if self.socket_path.exists() and client.get('/_ping').text == 'OK':
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise ServiceError(f'podman system service did not answer /_ping within {STARTUP_TIMEOUT}s; log:\n{self.log}')

    def podman(self, *args, check=True):
        """Run ``podman ARGS`` against this service's storage; returns CompletedProcess (text). Raises on failure."""
        result = subprocess.run([PODMAN_BINARY, *self._global_args(), *args], capture_output=True, text=True,
                                env=self._env(), stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise ServiceError(f'podman {" ".join(args)} failed ({result.returncode}):\n{result.stderr}')
        return result

    def images(self):
        """``podman images`` as parsed JSON (a list of dicts with ``Id``, ``Names``, ``Digest``, ...)."""
        return json.loads(self.podman('images', '--format', 'json').stdout or '[]')

    def stop(self):
        """Stop the service and remove its run state (images stay under ``workdir``)."""
        stop_process(self._process, timeout=10.0)
        self._process = None
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
